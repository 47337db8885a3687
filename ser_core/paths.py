"""Where the project keeps generated things (never committed)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO_ROOT / "samples"
CHECKPOINTS_DIR = REPO_ROOT / "checkpoints"  # the checkpoints shipped with the project


def cache_dir() -> Path:
    """User cache: converted encoder weights, feature cache, generated corpora.

    ``SER_CACHE_DIR`` overrides it (tests point it at a temporary directory).
    """
    root = os.environ.get("SER_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ser-explorer"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_corpus_dir() -> Path:
    """Where ``python -m ser_core corpus`` writes the demo corpus by default."""
    return Path(os.environ.get("SER_CORPUS_DIR") or cache_dir() / "demo_corpus")


def calm_corpus_dir() -> Path:
    """Where ``python -m ser_core corpus --words-decide`` writes the calm-voice set by default."""
    return cache_dir() / "demo_calm"


def checkpoints_dir() -> Path:
    """Where the app writes the checkpoints it trains: ``SER_CHECKPOINTS_DIR``, else a folder of
    their own in the user cache, so the shipped ones in the repo's ``checkpoints/``
    (``CHECKPOINTS_DIR``) are never replaced and the working tree stays clean."""
    raw = (os.environ.get("SER_CHECKPOINTS_DIR") or "").strip()
    return Path(raw).expanduser() if raw else cache_dir() / "checkpoints"


def checkpoint_dirs() -> list[Path]:
    """The folders the checkpoint pickers list: trained checkpoints first, then the shipped ones
    (one folder when ``SER_CHECKPOINTS_DIR`` is not set or is the repo's ``checkpoints/``)."""
    folders: list[Path] = []
    for folder in (checkpoints_dir(), Path(CHECKPOINTS_DIR)):
        if not any(_same(folder, seen) for seen in folders):
            folders.append(folder)
    return folders


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b
