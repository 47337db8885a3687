"""Shared test settings: offline hub, small thread counts, fixtures' paths."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(autouse=True)
def _trained_checkpoints_elsewhere(tmp_path_factory, monkeypatch):
    """Checkpoints the app trains go to a temporary folder, never into the repository's
    checkpoints/ (SER_CHECKPOINTS_DIR; a test may point it at its own folder)."""
    monkeypatch.setenv("SER_CHECKPOINTS_DIR", str(tmp_path_factory.mktemp("trained_checkpoints")))


@pytest.fixture(autouse=True)
def _teacher_on_the_server_machine(tmp_path_factory, monkeypatch):
    """The pages see a test as the teacher's browser on the server machine with no teacher password
    set (ser_core.access; test_access.py makes visitors), and corpora in pytest's temporary folders
    may be read from the pages (SER_DATA_DIRS; a streamlit server a test starts inherits both)."""
    monkeypatch.delenv("SER_TEACHER_PASSWORD", raising=False)
    monkeypatch.setenv("SER_DATA_DIRS", str(tmp_path_factory.getbasetemp()))
    monkeypatch.setattr("ser_core.access.peer_address", lambda: "127.0.0.1")


# A tiny generated corpus (16 train / 4 val / 4 test utterances) with its own feature cache,
# made once per test module that asks for it.
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache dir for features (the Whisper conversion is cheap to redo)."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cache")
    mp.setenv("SER_CACHE_DIR", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def corpus(cache, tmp_path_factory):
    from ser_core.corpus import generate_corpus, plan_corpus

    plans = plan_corpus(200, seed=5, video=False)
    by_split = {s: [p for p in plans if p.split == s] for s in ("train", "val", "test")}
    chosen = by_split["train"][:16] + by_split["val"][:4] + by_split["test"][:4]
    return generate_corpus(tmp_path_factory.mktemp("tiny") / "c", plans=chosen, workers=1, progress=False)


@pytest.fixture(scope="module")
def shared_features_cache(tmp_path_factory):
    """A private cache per module (own jobs folder) whose features folder is shared by every
    module of the session that asks for it (the Train/Evaluate page tests use one corpus)."""
    shared = tmp_path_factory.getbasetemp() / "shared_features"
    (shared / "features").mkdir(parents=True, exist_ok=True)
    path = tmp_path_factory.mktemp("cache")
    (path / "features").symlink_to(shared / "features")
    mp = pytest.MonkeyPatch()
    mp.setenv("SER_CACHE_DIR", str(path))
    yield path
    mp.undo()
