"""Classroom-ready pages (streamlit.testing): no Deploy button, plain words on the Models page, full
emotion names, the Train page's checkpoint name and the demo corpus generated from the page.

Jobs live in this module's own cache folder (conftest's ``cache``), the demo corpus in tmp_path
(``SER_CORPUS_DIR``), trained checkpoints in a temporary ``SER_CHECKPOINTS_DIR`` (conftest).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ser_core import corpus_job
from ser_core.errors import InputError

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120
EMOTIONS = ("angry", "happy", "neutral", "sad")


def _train_page() -> AppTest:
    return AppTest.from_file(str(REPO / "pages/4_Train.py"), default_timeout=TIMEOUT).run()


@pytest.fixture
def no_demo_corpus(cache, tmp_path, monkeypatch):
    folder = tmp_path / "demo_corpus"
    folder.mkdir()
    monkeypatch.setenv("SER_CORPUS_DIR", str(folder))
    yield folder
    job = corpus_job.corpus_job()  # never leave a generation going
    while job is not None and job.active:
        time.sleep(0.5)
        job = corpus_job.corpus_job()


def test_the_toolbar_has_no_deploy_button():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["client"]["toolbarMode"] in ("minimal", "viewer")  # both hide Deploy
    out = subprocess.run([sys.executable, "-m", "streamlit", "config", "show"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and f'toolbarMode = "{config["client"]["toolbarMode"]}"' in out.stdout


@pytest.mark.skipif(not (REPO / "checkpoints" / "ks_transformer_demo.safetensors").exists(),
                    reason="shipped checkpoints missing")
def test_models_page_explains_in_plain_words_without_raw_json_or_docstrings():
    at = AppTest.from_file(str(REPO / "pages/5_Models.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert len(at.get("json")) == 0  # no raw {...} config
    assert not any("source file" in e.label for e in at.expander)
    text = "\n".join(m.value for m in at.markdown)
    for raw in ("Paper: W. Chen", "``", "eq. 1", "sec. 2"):  # the docstrings' wording
        assert raw not in text, raw
    assert "key-sparse" in text and "searchlight" in text  # the plain explanations
    assert len(at.table) == len([s for s in at.subheader if "·" in s.value]) >= 6  # one settings table each
    for table in at.table:
        rows = dict(zip(table.value["setting"], table.value["value"]))
        assert rows["Emotions"] == ", ".join(EMOTIONS)  # full names where labels are listed
        assert not any(str(v).startswith(("{", "[")) for v in rows.values())
        assert all(table.value["what it means"].str.len() > 10)
    assert not any("checkpoints/" in c.value for c in at.caption)


def test_train_page_checkpoint_name_follows_the_model_until_the_user_types_one(cache, no_demo_corpus):
    at = _train_page()
    assert not at.exception, at.exception
    assert at.text_input(key="train_name").value == "my_ks_transformer"
    at.selectbox(key="train_model").set_value("ilt").run()
    assert at.text_input(key="train_name").value == "my_ilt"
    at.selectbox(key="train_model").set_value("cat").run()
    assert at.text_input(key="train_name").value == "my_cat"
    at.text_input(key="train_name").set_value("our_class_model").run()
    at.selectbox(key="train_model").set_value("mesm").run()
    assert at.text_input(key="train_name").value == "our_class_model"  # the user's own name is kept
    assert not at.exception


def test_start_is_disabled_without_a_demo_corpus_and_the_page_generates_it(cache, no_demo_corpus, monkeypatch):
    at = _train_page()
    assert not at.exception, at.exception
    assert at.selectbox(key="train_corpus_kind").value == "demo"
    assert at.button(key="train_start_button").disabled
    info = " ".join(i.value for i in at.info)
    took = corpus_job.format_duration(corpus_job.estimate_corpus_seconds())
    assert f"Generating it takes {took}" in info and "2000" in info
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")

    monkeypatch.setattr(corpus_job, "DEMO_CORPUS_UTTERANCES", 8)  # a small corpus, the same command
    at.button(key="train_generate_corpus").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    job = corpus_job.corpus_job()
    assert job.command[1:4] == ["-m", "ser_core", "corpus"] and job.out == str(no_demo_corpus)
    if job.active:  # the page shows the progress while it runs
        assert "Generating the demo corpus" in at.get("progress")[0].proto.text
        assert at.button(key="train_start_button").disabled
    deadline = time.time() + 120
    while corpus_job.corpus_job().active and time.time() < deadline:
        time.sleep(0.5)
    job = corpus_job.corpus_job()
    assert job.status == "finished", job.log_tail()
    progress = corpus_job.corpus_progress(job)
    assert (progress.done, progress.total, progress.remaining) == (8, 8, 0.0)
    assert (no_demo_corpus / "manifest.csv").exists()

    at.run()
    assert not at.exception, at.exception
    assert not at.button(key="train_start_button").disabled
    assert "train_generate_corpus" not in [b.key for b in at.button]



def test_the_page_generates_the_calm_voice_set_when_a_run_needs_it(cache, no_demo_corpus, monkeypatch):
    """The calm-voice set (the default KS-Transformer's fourth corpus) gets its own Generate button:
    the generator's --words-decide companion set, in its own folder, and Start waits for it."""
    from ser_core.paths import calm_corpus_dir

    (no_demo_corpus / "manifest.csv").write_text("path,label\n")  # the demo corpus is there; the set is not
    at = _train_page()
    at.selectbox(key="train_corpus_kind").set_value("demo-calm").run()
    assert not at.exception, at.exception
    assert at.button(key="train_start_button").disabled
    assert "train_generate_corpus" not in [b.key for b in at.button]
    info = " ".join(i.value for i in at.info)
    assert "The calm-voice set is 800 synthetic clips said calmly" in info
    assert "press Generate calm-voice set on the Train page" in " ".join(w.value for w in at.warning)
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")

    monkeypatch.setattr(corpus_job, "CALM_SET_UTTERANCES", 8)  # a small set, the same command
    at.button(key="train_generate_calm").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    job = corpus_job.corpus_job()
    assert (job.kind, job.title, job.out) == ("demo-calm", "calm-voice set", str(calm_corpus_dir()))
    assert job.command[1:4] == ["-m", "ser_core", "corpus"] and job.command[-1] == "--words-decide"
    with pytest.raises(InputError, match="calm-voice set is already being generated|already there"):
        corpus_job.start_corpus(kind="demo")  # one generation at a time (or, done: the demo corpus is there)
    deadline = time.time() + 120
    while corpus_job.corpus_job().active and time.time() < deadline:
        time.sleep(0.5)
    assert corpus_job.corpus_job().status == "finished", corpus_job.corpus_job().log_tail()
    rows = (calm_corpus_dir() / "manifest.csv").read_text().splitlines()
    assert len(rows) == 9 and all("words_" in r for r in rows[1:])
    at.run()
    assert not at.exception, at.exception
    assert not at.button(key="train_start_button").disabled
    assert "train_generate_calm" not in [b.key for b in at.button]

def test_corpus_generation_is_refused_when_the_corpus_is_there_and_reads_the_progress_bar(cache, no_demo_corpus):
    (no_demo_corpus / "manifest.csv").write_text("path,label\n")
    assert corpus_job.demo_corpus_ready()
    if shutil.which("espeak-ng") is not None:
        with pytest.raises(InputError, match="already there"):
            corpus_job.start_corpus()
    job = corpus_job.CorpusJob(out=str(no_demo_corpus), n=2000, workers=2, started=time.time() - 30)
    job.folder.mkdir(parents=True, exist_ok=True)
    job.log_path.write_text("loading\rdemo corpus:  12%|█▏        | 240/2000 [00:20<02:28, 11.8it/s]")
    progress = corpus_job.corpus_progress(job)
    assert (progress.done, progress.total, progress.remaining) == (240, 2000, 148.0)
    assert corpus_job.format_duration(148) == "about 2 min" and corpus_job.format_duration(12) == "about 10 s"
    job.log_path.write_text("")
    estimate = corpus_job.estimate_corpus_seconds(2000, 2)
    assert corpus_job.corpus_progress(job).remaining == pytest.approx(estimate - 30, abs=2)


def test_models_page_shows_one_experiment_at_a_time_with_its_table():
    """The papers' experiments: one picker, the chosen one's table (the shipped results where
    this machine ran none), the command always shown."""
    from ser_core.experiments import EXPERIMENT_TITLES, EXPERIMENTS, load_results

    assert set(EXPERIMENT_TITLES) == set(EXPERIMENTS)
    at = AppTest.from_file(str(REPO / "pages/5_Models.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    picker = at.selectbox(key="models_experiment")
    assert list(picker.options) == [EXPERIMENT_TITLES[n] + ("" if load_results(n) else " (not run yet)")
                                    for n in EXPERIMENTS]
    for name in (EXPERIMENTS[0], EXPERIMENTS[-1]):  # the first (shown at once) and another one
        picker.set_value(name).run()
        assert not at.exception, at.exception
        text = "\n".join(m.value for m in at.markdown)
        assert f"python -m ser_core experiment {name}" in text
        saved = load_results(name)
        if saved:
            assert len(at.dataframe[-1].value) == len(saved["rows"])
        else:
            assert any("Not run yet" in i.value for i in at.info)
