"""Background training jobs (ser_core.jobs) and the Evaluate and Train pages (streamlit.testing).

Real subprocesses train a tiny KS-Transformer on the 24-utterance generated corpus; checkpoints
go to a temporary folder (``SER_CHECKPOINTS_DIR`` and ``paths.CHECKPOINTS_DIR``
are pointed there), never into the repository.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from ser_core import corpus_choice, job_progress, jobs
from ser_core.checkpoint import list_checkpoints, read_meta
from ser_core.errors import InputError

REPO = Path(__file__).resolve().parent.parent
CHECKPOINT = REPO / "checkpoints" / "ks_transformer_demo.safetensors"
TIMEOUT = 120
TINY = "d_model=32 ff_dim=64 feature_layers=1 ccab_layers=1 fusion_layers=1"
SMALL_RUN = dict(epochs=2, batch_size=2, max_utterances=12, model_args=TINY)  # 8 train → 4 batches

pytestmark = [
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed"),
    pytest.mark.skipif(not CHECKPOINT.exists(), reason="shipped checkpoint missing"),
]


@pytest.fixture(scope="module")
def cache(shared_features_cache):
    """Overrides conftest's: this module's own jobs folder, features shared with the others."""
    return shared_features_cache


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
    """A checkpoints folder holding only the shipped demo checkpoint (a copy)."""
    import ser_core.paths
    import ser_core.ui

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copy(CHECKPOINT, folder / CHECKPOINT.name)
    monkeypatch.setattr(ser_core.paths, "CHECKPOINTS_DIR", folder)
    monkeypatch.setenv("SER_CHECKPOINTS_DIR", str(folder))
    yield folder
    job = jobs.current_job()  # never leave a run going
    if job is not None and job.active:
        jobs.request_stop()
        jobs.wait(job, timeout=120)


def _wait_for(condition, timeout: float = 150.0, poll: float = 0.05, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out waiting for {what}")


def _status_in_another_process(cache: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-c", "from ser_core import jobs; j = jobs.current_job(); print(j.id, j.status)"],
        cwd=REPO, env={**os.environ, "SER_CACHE_DIR": str(cache)}, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# --- ser_core.jobs -------------------------------------------------------------------------------
def test_job_runs_in_background_stops_with_code_3_and_resumes_to_the_end(cache, corpus, checkpoints):
    job = jobs.start_training("tiny_job", root=str(corpus), **SMALL_RUN)
    assert job.status == "running" and job.pid > 0
    assert Path(job.out) == checkpoints / "tiny_job.safetensors"
    with pytest.raises(InputError, match="already running"):
        jobs.start_training("second_job", root=str(corpus), **SMALL_RUN)
    # another process (another server, a refreshed browser) sees the same job from the files
    assert _status_in_another_process(cache) == f"{job.id} running"

    _wait_for(lambda: job_progress.read_events(jobs.current_job()).losses, what="the first batch")
    assert jobs.request_stop().status == "stopping"
    stopped = jobs.wait(job, timeout=120)
    assert (stopped.status, stopped.exit_code) == ("stopped", 3)
    assert _status_in_another_process(cache) == f"{job.id} stopped"
    progress = job_progress.read_events(stopped)
    assert progress.phase == "stopped" and progress.epochs == 2 and progress.batches == 4
    assert 1 <= progress.steps_done < 8 and stopped.resumable
    assert (stopped.run_dir / "state.pt").exists()

    jobs.resume()
    assert jobs.current_job().status == "running"
    done = jobs.wait(job, timeout=180)
    assert (done.status, done.exit_code, done.message) == ("finished", 0, None)
    progress = job_progress.read_events(done)
    assert progress.phase == "done" and progress.fraction == 1.0
    assert [r["epoch"] for r in progress.history] == [1, 2]
    # every batch once, in order, across the stop: the resumed run continued where it stopped
    assert [x for x, _ in progress.losses] == pytest.approx([k / 4 for k in range(1, 9)])
    assert all(np.isfinite(loss) for _, loss in progress.losses)
    assert "resumed from" in done.log_tail()
    meta = read_meta(done.out)
    assert progress.labels == meta["training"]["labels"]  # the classes of this 8-utterance train part
    assert len(progress.history[-1]["val_confusion"]) == len(progress.labels)
    assert progress.test == meta["metrics"]["test"] and meta["config"]["d_model"] == 32
    assert Path(done.out) in list_checkpoints(checkpoints)  # every page's picker lists it now
    with pytest.raises(InputError, match="only a stopped or interrupted job"):
        jobs.resume()


def test_a_trained_checkpoint_goes_to_SER_CHECKPOINTS_DIR_and_the_pickers_list_both_folders(
        cache, corpus, tmp_path, monkeypatch):
    from ser_core import paths
    from ser_core.checkpoint import list_all_checkpoints

    shipped = REPO / "checkpoints"
    before = sorted(p.name for p in shipped.iterdir())
    trained = tmp_path / "trained"
    monkeypatch.setenv("SER_CHECKPOINTS_DIR", str(trained))
    assert paths.CHECKPOINTS_DIR == shipped and paths.checkpoint_dirs() == [trained, shipped]
    with pytest.raises(InputError, match="ships with the project"):  # a shipped checkpoint is never shadowed
        jobs.start_training(CHECKPOINT.stem, root=str(corpus), **SMALL_RUN)
    job = jobs.start_training("written_elsewhere", root=str(corpus), **{**SMALL_RUN, "epochs": 1})
    try:
        done = jobs.wait(job, timeout=240)
    finally:
        if jobs.current_job().active:
            jobs.request_stop()
            jobs.wait(job, timeout=120)
    assert (done.status, done.message) == ("finished", None)
    assert Path(done.out) == trained / "written_elsewhere.safetensors" and Path(done.out).exists()
    assert sorted(p.name for p in shipped.iterdir()) == before  # nothing written into the repository
    listed = list_all_checkpoints()
    assert listed[0] == Path(done.out) and CHECKPOINT in listed  # trained first, then the shipped ones

    at = AppTest.from_file(str(REPO / "pages/4_Train.py"), default_timeout=TIMEOUT).run()
    at.radio(key="train_start").set_value("a checkpoint (fine-tune)").run()
    assert not at.exception, at.exception
    assert {"written_elsewhere.safetensors", CHECKPOINT.name} <= set(at.selectbox(key="train_init_from").options)
    # what the chosen checkpoint learnt from, and that fine-tuning keeps its settings
    about = " ".join(c.value for c in at.caption)
    assert "This model was trained on a corpus listed in a manifest CSV." in about, about
    assert "Fine-tuning keeps its settings and encoders" in about
    at.selectbox(key="train_init_from").set_value(CHECKPOINT).run()
    assert "This model was trained on RAVDESS (real actors), TESS" in " ".join(c.value for c in at.caption)
    assert "Run `written_elsewhere`: finished" in _subheads(at)
    assert any("saved as `written_elsewhere`" in c.value for c in at.caption)


def test_settings_are_checked_before_anything_starts(cache, corpus, checkpoints, monkeypatch):
    before = jobs.current_job()
    cases = [
        (dict(name="../escape"), "letters, digits"),
        (dict(name="ks_transformer_demo"), "already exists"),
        (dict(name="x", model="no_such_model"), "Unknown model"),
        (dict(name="x", model_args="d_model"), "key=value"),
        (dict(name="x", model_args="no_such_setting=3"), "no setting"),
        (dict(name="x", epochs=0), "epochs"),
        (dict(name="x", corpus="iemocap", root=str(corpus.parent)), "Session1..5"),
        (dict(name="x", root=str(corpus.parent / "missing.csv")), "does not exist"),
        (dict(name="x", init_from=str(checkpoints / "ks_transformer_demo.safetensors"), model="no_such_model"),
         "Unknown model"),
    ]
    for kwargs, message in cases:
        kwargs = {"root": str(corpus), **kwargs}
        with pytest.raises(InputError, match=message):
            jobs.start_training(**kwargs)
    assert jobs.current_job() == before  # nothing was started
    assert jobs.parse_model_args("d_model=32, variant=full\nheads=2") == {"d_model": 32, "variant": "full", "heads": 2}
    monkeypatch.setenv("SER_CORPUS_DIR", str(corpus.parent / "nowhere"))
    with pytest.raises(InputError, match="python -m ser_core corpus"):
        corpus_choice.resolve_corpus("demo")
    with pytest.raises(InputError, match="Type the path of the RAVDESS folder"):
        corpus_choice.resolve_corpus("ravdess", "  ")


def test_bad_input_fails_with_the_trainers_message_and_stop_while_loading_ends_at_once(
        cache, corpus, checkpoints, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nnothing.wav,ang\n")
    job = jobs.start_training("bad_job", root=str(bad), check_data=False, **SMALL_RUN)
    failed = jobs.wait(job, timeout=120)
    assert (failed.status, failed.exit_code) == ("failed", 2)
    assert "no usable utterances" in failed.message and not failed.resumable

    job = jobs.start_training("cut_short", root=str(corpus), **SMALL_RUN)
    jobs.request_stop()  # still starting up: there is no state to save, so it ends now
    stopped = jobs.wait(job, timeout=30)
    assert stopped.status == "stopped" and stopped.exit_code is None
    assert not Path(stopped.out).exists()


# --- pages ---------------------------------------------------------------------------------------
def _evaluate_page() -> AppTest:
    at = AppTest.from_file(str(REPO / "home.py"), default_timeout=TIMEOUT).run()  # so switch_page resolves
    return at.switch_page("pages/3_Evaluate.py").run()


def _plotly(at: AppTest, index: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[index].proto.spec)


def _array(value) -> np.ndarray:
    """A plotly JSON array: a list, or plotly 6's typed array {dtype, bdata, shape}."""
    if isinstance(value, dict):
        data = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        return data.reshape([int(n) for n in str(value.get("shape", len(data))).split(",")])
    return np.asarray(value)


def test_evaluate_page_shows_the_numbers_evaluate_computes(cache, corpus, checkpoints, monkeypatch):
    import streamlit as st

    from ser_core.scoring import evaluate

    requests = []  # what the page asked Analyze to open, seen as it switches (Analyze takes it)
    switch_page = st.switch_page

    def spy(page):
        requests.append((page, dict(st.session_state["analyze_request"])))
        return switch_page(page)

    monkeypatch.setattr(st, "switch_page", spy)
    from streamlit.delta_generator import DeltaGenerator

    downloads = {}  # label → what the button would serve (the page builds it only when clicked)
    download_button = DeltaGenerator.download_button

    def record(self, label, data, file_name=None, *args, **kwargs):
        downloads[label] = (data, file_name)
        return download_button(self, label, data, file_name, *args, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "download_button", record)  # the page's columns call it

    at = _evaluate_page()
    assert not at.exception
    at.selectbox(key="eval_corpus_kind").set_value("manifest").run()
    at.text_input(key="eval_corpus_path").set_value(str(corpus)).run()
    at.button(key="eval_button").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]

    expected = evaluate(str(checkpoints / CHECKPOINT.name), "manifest", str(corpus), progress=False)
    shown = {m.label: m.value for m in at.metric}
    assert shown == {"WA": f"{expected['wa']:.3f}", "UA": f"{expected['ua']:.3f}",
                     "macro-F1": f"{expected['macro_f1']:.3f}", "utterances": str(expected["n"])}
    spec = _plotly(at)
    assert _array(spec["data"][0]["z"]).tolist() == expected["confusion_matrix"]
    table = at.dataframe[0].value
    assert table["support"].tolist() == [r["support"] for r in expected["per_class"]]
    np.testing.assert_allclose(table["F1"], [r["f1"] for r in expected["per_class"]])
    assert len(at.get("download_button")) == 3
    data, file_name = downloads["Predictions (CSV)"]
    rows = list(csv.DictReader(io.StringIO(data())))
    assert file_name.endswith("_predictions.csv") and len(rows) == expected["n"]
    assert [(r["id"], r["true"], r["predicted"]) for r in rows] == [
        (p["id"], p["true"], p["pred"]) for p in expected["predictions"]]
    data, _ = downloads["Per-class scores (CSV)"]
    rows = list(csv.DictReader(io.StringIO(data())))
    assert [r["label"] for r in rows] == expected["labels"] + ["WA (accuracy)", "UA (mean recall)", "macro-F1"]
    assert [float(r["f1"]) for r in rows[:-3]] == pytest.approx([r["f1"] for r in expected["per_class"]], abs=1e-4)
    assert (float(rows[-3]["f1"]), float(rows[-2]["recall"]), float(rows[-1]["f1"])) == pytest.approx(
        (expected["wa"], expected["ua"], expected["macro_f1"]), abs=1e-4)
    data, _ = downloads["Confusion matrix (PNG)"]
    assert data()[:8] == b"\x89PNG\r\n\x1a\n"

    at.radio(key="eval_cm_view").set_value("row-normalised (% of each true class)").run()
    z = _array(_plotly(at)["data"][0]["z"])
    counts = np.array(expected["confusion_matrix"])
    rows = counts.sum(1) > 0
    np.testing.assert_allclose(z[rows].sum(1), 100.0)
    assert "row-normalised" in _plotly(at)["layout"]["title"]["text"]

    wrong = [p for p in expected["predictions"] if p["true"] != p["pred"]]
    assert len(at.dataframe[1].value) == len(wrong) >= 1  # the demo model misses one of these four
    at.button(key="eval_open").click().run()
    assert not at.exception, at.exception
    assert requests == [("pages/1_Analyze.py", {
        "audio": wrong[0]["audio"], "transcript": wrong[0]["transcript"], "video": wrong[0]["video"],
        "name": wrong[0]["id"], "label": wrong[0]["true"], "augment": None})]
    assert any(t.value == "Analyze an utterance" for t in at.title)  # it switched page


def test_evaluate_page_explains_a_folder_that_is_not_a_corpus(cache, corpus, checkpoints, tmp_path, monkeypatch):
    at = _evaluate_page()
    at.selectbox(key="eval_corpus_kind").set_value("iemocap").run()
    at.text_input(key="eval_corpus_path").set_value(str(tmp_path)).run()
    at.button(key="eval_button").click().run()
    assert not at.exception
    assert "IEMOCAP: no Session1..5 folders found" in at.error[0].value
    assert not at.metric  # no stale results
    at.selectbox(key="eval_corpus_kind").set_value("manifest").run()
    at.text_input(key="eval_corpus_path").set_value(str(corpus.parent / "wav")).run()
    at.button(key="eval_button").click().run()
    assert "expected a CSV with at least path,label" in at.error[0].value
    monkeypatch.setenv("SER_CORPUS_DIR", str(tmp_path / "no_corpus"))
    at.selectbox(key="eval_corpus_kind").set_value("demo").run()
    assert any("python -m ser_core corpus" in w.value for w in at.warning)


def test_evaluate_page_scores_the_held_out_speakers_of_a_mix(cache, corpus, checkpoints):
    from ser_core.scoring import evaluate

    at = _evaluate_page()
    assert {"speakers", "all"} <= {o.split(" — ")[0] for o in at.selectbox(key="eval_protocol").options}
    at.selectbox(key="eval_corpus_kind").set_value("manifest").run()
    at.text_input(key="eval_corpus_path").set_value(str(corpus)).run()
    at.selectbox(key="eval_protocol").set_value("speakers").run()
    at.button(key="eval_button").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    # the demo corpus keeps its own split in a mix: the same 4 test clips (features already cached)
    expected = evaluate(str(checkpoints / CHECKPOINT.name), "manifest", str(corpus), protocol="speakers",
                        progress=False)
    assert {m.label: m.value for m in at.metric}["UA"] == f"{expected['ua']:.3f}"
    assert at.subheader[0].value == (f"{CHECKPOINT.name} on the test part of the split by speaker "
                                     "(test voices never heard in training)")


def _subheads(at: AppTest) -> list[str]:
    return [s.value for s in at.subheader]


def test_train_page_starts_a_run_every_session_sees_and_stops_it(cache, corpus, checkpoints):
    at = AppTest.from_file(str(REPO / "pages/4_Train.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.selectbox(key="train_model").value == "ks_transformer"
    assert "ks_transformer" in at.selectbox(key="train_model").options
    at.selectbox(key="train_corpus_kind").set_value("manifest").run()
    at.text_input(key="train_corpus_path").set_value(str(corpus))
    at.number_input(key="train_epochs_fast").set_value(40)  # still running when Stop is pressed, even on busy cores
    at.number_input(key="train_bs_fast").set_value(2)
    at.number_input(key="train_max_utts").set_value(12)
    at.text_input(key="train_model_args").set_value(TINY)
    at.text_input(key="train_name").set_value("page_run")
    at.button(key="train_start_button").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert "Run `page_run`: running" in _subheads(at)
    assert any(c.value.startswith(f"ks_transformer on Manifest CSV `{corpus}` · its own train/validation/test "
                                  "split · fast preset") for c in at.caption), [c.value for c in at.caption]

    other = AppTest.from_file(str(REPO / "pages/4_Train.py"), default_timeout=TIMEOUT).run()  # a second browser
    assert "Run `page_run`: running" in _subheads(other)
    assert other.button(key="train_start_button").disabled

    def curve_drawn():
        at.run()
        return any(c.proto.spec and "Training loss" in c.proto.spec for c in at.get("plotly_chart"))

    _wait_for(curve_drawn, poll=0.5, what="the loss curve")
    loss = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert len(_array(loss["y"])) >= 1 and "epoch" in at.get("progress")[0].proto.text
    at.button(key="train_stop").click().run()
    assert not at.exception
    _wait_for(lambda: at.run() and "Run `page_run`: stopped" in _subheads(at), poll=0.5, what="the stop")
    assert at.button(key="train_resume") is not None
    assert not at.button(key="train_start_button").disabled
    assert jobs.current_job().exit_code == 3


def test_evaluate_on_augmented_copies_scores_other_waveforms_reproducibly(cache, corpus, checkpoints):
    """``evaluate(augment_seed=…)`` (CLI ``--augmented SEED``) scores one augmented copy of each
    test clip: other waveforms than the clips (other features), the same ones for the same seed."""
    from ser_core.scoring import evaluate

    ckpt = str(checkpoints / CHECKPOINT.name)
    clean = evaluate(ckpt, "manifest", str(corpus), progress=False)
    first = evaluate(ckpt, "manifest", str(corpus), progress=False, augment_seed=7)
    again = evaluate(ckpt, "manifest", str(corpus), progress=False, augment_seed=7)
    assert first["augment_seed"] == 7 and clean["augment_seed"] is None
    assert first["n"] == clean["n"] == 4
    assert [p["id"] for p in first["predictions"]] == [p["id"] + "#aug0" for p in clean["predictions"]]
    assert [p["confidence"] for p in first["predictions"]] == [p["confidence"] for p in again["predictions"]]
    assert [p["confidence"] for p in first["predictions"]] != [p["confidence"] for p in clean["predictions"]]


def test_evaluate_page_scores_augmented_copies_when_asked(cache, corpus, checkpoints, monkeypatch):
    """The page's "Other rooms and microphones" toggle: the numbers of evaluate(augment_seed=the
    page's seed), said in the heading; "Open on Analyze" hands over the copy, not the clip."""
    import streamlit as st

    from ser_core.scoring import AUGMENTED_COPY_SEED, evaluate

    requests = []
    switch_page = st.switch_page
    monkeypatch.setattr(st, "switch_page", lambda page: requests.append(dict(st.session_state["analyze_request"]))
                        or switch_page(page))
    at = _evaluate_page()
    at.selectbox(key="eval_corpus_kind").set_value("manifest").run()
    at.text_input(key="eval_corpus_path").set_value(str(corpus)).run()
    at.toggle(key="eval_augmented").set_value(True).run()
    at.button(key="eval_button").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    expected = evaluate(str(checkpoints / CHECKPOINT.name), "manifest", str(corpus), progress=False,
                        augment_seed=AUGMENTED_COPY_SEED)
    assert {m.label: m.value for m in at.metric}["UA"] == f"{expected['ua']:.3f}"
    assert at.subheader[0].value.endswith("each clip as an augmented copy (another room and microphone)")
    wrong = [p for p in expected["predictions"] if p["true"] != p["pred"]]
    assert wrong, "the tiny test model gets some copies wrong"
    assert list(at.dataframe[1].value["id"]) == [p["id"] for p in wrong]  # [0]: per class
    at.button(key="eval_open").click().run()
    assert requests and requests[0]["augment"] == wrong[0]["augment"] and requests[0]["augment"]["seed"] >= 0
    assert not at.exception, at.exception
    said = " ".join(c.value for c in at.caption)  # Analyze, with the copy's prediction
    assert f"**{wrong[0]['id']}** (opened from Evaluate: an augmented copy" in said, said
    assert f"confidence {wrong[0]['confidence']:.0%}" in said
