"""streamlit.testing tests of the home, Analyze and Compare-k pages with the shipped checkpoint."""

from __future__ import annotations

import io
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from streamlit.testing.v1 import AppTest

from ser_core.data.mix import SYNTHETIC

REPO = Path(__file__).resolve().parent.parent
CHECKPOINT = REPO / "checkpoints" / "ks_transformer_demo.safetensors"
TIMEOUT = 120

pytestmark = pytest.mark.skipif(not CHECKPOINT.exists(), reason="shipped checkpoint missing")


def _page(name: str) -> AppTest:
    path = REPO / ("home.py" if name == "home" else f"pages/{name}.py")
    return AppTest.from_file(str(path), default_timeout=TIMEOUT)


def _all_text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [m.value for m in at.subheader] + [m.value for m in at.caption]
    return "\n".join(str(p) for p in parts)


def test_home_page_names_the_model_and_lists_samples():
    at = _page("home").run()
    assert not at.exception
    assert at.title[0].value == "SER attention explorer"
    assert "ks_transformer" in " ".join(c.value for c in at.sidebar.caption)
    assert len(at.dataframe) == 1


def test_the_sidebar_lists_every_page_with_the_first_called_home():
    """Streamlit's own list (which names the first page "app", after its file) is hidden by
    .streamlit/config.toml; each page draws the links, the same on every page."""
    from ser_core import ui

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showSidebarNavigation"] is False
    at = AppTest.from_file(str(REPO / "home.py"), default_timeout=60).run()
    names = [name for name, *_ in ui.PAGES]
    assert names[0] == "Home" and "app" not in names
    assert [link.proto.label for link in at.sidebar.get("page_link")] == names
    assert all((REPO / script).is_file() for _, script, *_ in ui.PAGES)
    assert sorted(p.name for p in (REPO / "pages").glob("*.py")) == sorted(
        Path(script).name for _, script, *_ in ui.PAGES[1:])  # no page left out
    at.switch_page("pages/0_Classroom.py").run()  # a light page; the links are the same on every page
    assert not at.exception
    assert [link.proto.label for link in at.sidebar.get("page_link")] == names


def test_analyze_sample_shows_prediction_and_reruns_on_keep_ratio():
    at = _page("1_Analyze").run()
    assert not at.exception
    # before Analyze: the picked sample's waveform, said to be not analysed yet (and nothing else drawn)
    preview = at.get("plotly_chart")
    assert len(preview) == 1 and "(not analysed yet)" in preview[0].proto.spec, len(preview)
    at.button(key="analyze_button").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    heads = [s.value for s in at.subheader]
    # the first sample ("That exam left me gloomy last night", said sadly) is analysed with its
    # known transcript, as on every other page, and comes out right
    from ser_core.ui import FIRST_SAMPLE, label_name, sample_clips

    assert sample_clips()[0]["path"] == FIRST_SAMPLE and sample_clips()[0]["label"] == "sad"
    assert f"Prediction: {label_name('sad')}" in heads, heads
    assert "words from the clip's known transcript" in _all_text(at)
    # how the default model's word features were made (each word on its own), said plainly
    assert "encodes each word on its own" in _all_text(at)
    assert len(at.get("plotly_chart")) >= 2  # the waveform and the chosen view
    assert "ser-probs" in " ".join(h.proto.body for h in at.get("html"))  # the probabilities, as HTML bars
    assert len(at.get("download_button")) == 3  # PNG, CSV, JSON (built only when clicked)
    # one view drawn at a time: the chosen one, beside the probabilities and the waveform
    for view, key in (("Key importance", "keys"), ("Spectrogram", "spectrogram"), ("Attention map", "heatmap")):
        at.session_state["analyze_view"] = view
        at.run()
        assert not at.exception, (view, at.exception)
        drawn = [c.proto.id.rsplit("-", 1)[-1] for c in at.get("plotly_chart")]
        assert drawn == ["waveform", key], (view, drawn)
    layer_before = at.selectbox(key="analyze_layer").value
    at.slider(key="analyze_keep_ratio").set_value(0.1).run()
    assert not at.exception
    assert at.selectbox(key="analyze_layer").value == layer_before
    assert "keep_ratio 0.10" in _all_text(at)
    at.button(key="analyze_button").click().run()  # the same clip again: its features are reused
    assert not at.exception
    assert "kept from an earlier run of this clip" in _all_text(at)


SHIPPED = sorted(p.name for p in (REPO / "checkpoints").glob("*.safetensors"))


@pytest.mark.parametrize("checkpoint", SHIPPED)
def test_analyze_sample_with_every_shipped_checkpoint(checkpoint):
    """Each model (KS-Transformer, MESM, FE2E, MFSN, ILT, CAT) draws its prediction and figures
    on the Analyze page (the browser tests draw three of them in Chromium)."""
    at = _page("1_Analyze").run()
    at.sidebar.selectbox(key="checkpoint").set_value(checkpoint).run()
    from ser_core.checkpoint import read_meta

    model = read_meta(REPO / "checkpoints" / checkpoint)["model"]
    assert f"**{model}**" in " ".join(c.value for c in at.sidebar.caption)  # the picker names it
    at.button(key="analyze_button").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert any(s.value.startswith("Prediction: ") for s in at.subheader)
    assert len(at.get("plotly_chart")) >= 2 and "ser-probs" in " ".join(h.proto.body for h in at.get("html"))


def _wav_bytes(samples: np.ndarray, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format="WAV")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("silence.wav", _wav_bytes(np.zeros(16000, np.float32)), "no sound"),
        ("noise.wav", bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8)), "could not"),
        ("empty.wav", b"", "empty"),
    ],
)
def test_analyze_bad_upload_gives_a_message_not_a_traceback(name, data, expected):
    at = _page("1_Analyze").run()
    at.radio(key="analyze_source").set_value("Upload a file").run()
    uploader = at.get("file_uploader")
    if not uploader:
        pytest.skip("this streamlit version's AppTest has no file_uploader support")
    uploader[0].set_value((name, data, "audio/wav")).run()
    at.button(key="analyze_button").click().run()
    assert not at.exception, at.exception
    assert at.error, "expected an error message"
    assert expected in at.error[0].value.lower(), at.error[0].value


def test_compare_k_columns_and_curve():
    at = _page("2_Compare_k").run()
    assert not at.exception
    at.button(key="compare_button").click().run()
    assert not at.exception, at.exception
    charts = at.get("plotly_chart")
    # 3 columns × (probabilities + map) + the probability-over-k curve
    assert len(charts) == 7
    at.radio(key="compare_n").set_value(2).run()
    assert len(at.get("plotly_chart")) == 5
    at.slider(key="compare_k0").set_value(0.3).run()
    assert not at.exception


def test_compare_k_moving_one_slider_re_runs_only_that_column(monkeypatch):
    from ser_core.pipeline import Analyzer

    at = _page("2_Compare_k").run()
    at.button(key="compare_button").click().run()
    at.radio(key="compare_n").set_value(4).run()
    assert not at.exception
    calls = []
    run_model = Analyzer.run_model
    monkeypatch.setattr(Analyzer, "run_model", lambda self, *a, **kw: calls.append(kw) or run_model(self, *a, **kw))
    at.slider(key="compare_k1").set_value(0.7).run()
    assert not at.exception and calls == [{"keep_ratio": 0.7, "top_p": None}]
    at.slider(key="compare_k1").set_value(0.5).run()  # back to a setting seen before: remembered
    assert len(calls) == 1
    maps = [c for c in at.get("plotly_chart") if c.proto.id.rsplit("-", 1)[-1].startswith("compare_map")]
    assert len(maps) == 4


def test_compare_k_puts_models_trained_at_different_k_side_by_side(tmp_path, monkeypatch):
    """With a second KS-Transformer trained at another keep ratio (here: the default's weights
    with its meta saying 0.2), Compare k offers "trained at k" columns, each run at its own k,
    on the same features; the attention maps of a row share one colour scale."""
    import shutil

    from ser_core.checkpoint import CHECKPOINTS_DIR, read_meta, update_meta

    monkeypatch.setenv("SER_CHECKPOINTS_DIR", str(tmp_path))
    other = tmp_path / "ks_trained_at_02.safetensors"
    shutil.copy(CHECKPOINTS_DIR / "ks_transformer_demo.safetensors", other)
    meta = read_meta(other)
    update_meta(other, {"config": {**meta["config"], "ccab_keep_ratio": 0.2, "fusion_keep_ratio": 0.2}})

    at = _page("2_Compare_k").run()
    at.button(key="compare_button").click().run()
    assert not at.exception, at.exception
    at.toggle(key="compare_by_training").set_value(True).run()
    assert not at.exception, at.exception
    from ser_core import ui

    trained = ui.models_trained_at_other_k(ui.default_checkpoint())
    assert trained[0] == (str(other), 0.2)  # this one, trained here, wins over a shipped one at 0.2
    assert [k for _, k in trained] == sorted(k for _, k in trained) and 0.5 in [k for _, k in trained]
    models = [at.selectbox(key=f"compare_model{i}") for i in range(3)]
    assert [m.format_func(m.value) for m in models] == [f"trained at k = {k:.2f}" for _, k in trained[:3]]
    assert at.slider(key="compare_run0_0").value == 0.2  # run at the k it was trained at, first
    at.slider(key="compare_run1_1").set_value(0.8).run()
    assert not at.exception
    maps = [c for c in at.get("plotly_chart") if "compare_map" in str(c.proto.id)]
    tops = {json.loads(c.proto.spec)["data"][0]["zmax"] for c in maps}
    assert len(maps) == 3 and len(tops) == 1


def test_models_page_lists_every_checkpoint_with_size_cost_and_scores():
    from ser_core.checkpoint import list_checkpoints, read_meta
    from ser_core.model_card import model_card

    at = _page("5_Models").run()
    assert not at.exception
    table = at.dataframe[0].value
    shipped = list_checkpoints(REPO / "checkpoints")
    assert len(table) == len(shipped)
    row = table[table["checkpoint"] == CHECKPOINT.name].iloc[0]
    card = model_card(CHECKPOINT)
    assert row["parameters (M)"] == round(card.parameters / 1e6, 2) and card.parameters > 1e5
    assert row["GFLOPs / 10 s clip"] == round(card.flops_10s / 1e9, 2) > 0
    test = read_meta(CHECKPOINT)["metrics"]["test"]
    by_corpus = test.get("by_corpus") or {"demo": test}  # a mix scores each corpus on its own
    assert row["demo test UA %"] == f"{100 * by_corpus['demo']['ua']:.1f}"
    for corpus, scores in by_corpus.items():  # real corpora: held-out speakers, one column each
        if corpus not in SYNTHETIC:
            assert row[f"{corpus.upper()} test UA %"] == f"{100 * scores['ua']:.1f}"
    assert row["paper UA %"] == "75.3"  # KS-Transformer, IEMOCAP (Table 2)
    assert "not a comparison" in " ".join(c.value for c in at.caption)
    # how precise the held-out scores are: the margin from the clips drawn, per real corpus
    from ser_core.metrics import ua_margin

    precise = next(c.value for c in at.caption if c.value.startswith("How precise"))
    shipped_report = json.loads((REPO / "checkpoints" / "real_voices.json").read_text())
    for corpus in shipped_report["corpora"]:
        s = shipped_report["by_corpus"][corpus]
        assert f"±{100 * ua_margin(s['ua'], s['n']):.0f} points on {corpus.upper()} ({s['n']} clips)" in precise
    # the cross-corpus runs, one row per (model, corpus left out), each beside the probe on its data
    report = json.loads((REPO / "checkpoints" / "real_voices.json").read_text())
    cross = next(d.value for d in at.dataframe if "tested on" in d.value.columns)
    assert len(cross) == len(report["cross_corpus"]) > 0
    for (_, shown), r in zip(cross.iterrows(), report["cross_corpus"]):
        assert shown["model"] == r.get("model_name", "ks_transformer") and shown["tested on"] == r["test"].upper()
        assert shown["model UA %"] == f"{100 * r['model']['ua']:.1f}"
        assert shown["linear probe UA %"] == f"{100 * r['probe']['ua']:.1f}"
    # the default's card explains how often it looks at the voice (Whisper's frames averaged in pairs)
    rows = [t.value[t.value["setting"] == "Speech moments per second"]["value"].tolist()
            for t in at.table if "setting" in t.value.columns]
    pooled = [path for path in shipped if read_meta(path)["config"].get("audio_pool") == 2]
    assert CHECKPOINT in pooled and sorted(r for r in rows if r) == [["25"]] * len(pooled)


MESM_CHECKPOINT = REPO / "checkpoints" / "mesm_demo.safetensors"


@pytest.mark.skipif(not MESM_CHECKPOINT.exists(), reason="no shipped MESM checkpoint")
def test_sparse_masks_page_reruns_top_p_and_modalities_on_cached_features():
    import csv

    at = _page("6_Sparse_masks").run()
    assert not at.exception
    rows = list(csv.DictReader(open(REPO / "samples" / "manifest.csv")))
    at.selectbox(key="sparse_sample").set_value(next(i for i, r in enumerate(rows) if r["video"])).run()
    at.button(key="sparse_button").click().run()
    assert not at.exception and not at.error
    flops = lambda: float(at.metric[0].value.split()[0])  # noqa: E731
    dense = float(at.metric[1].value.split()[0])
    sparse_half = flops()
    assert 0 < sparse_half < dense
    at.slider(key="sparse_top_p").set_value(1.0).run()
    assert flops() > sparse_half  # keeping all the mass computes more points
    at.slider(key="sparse_top_p").set_value(0.2).run()
    assert flops() < sparse_half
    n_charts = len(at.get("plotly_chart"))
    at.checkbox(key="sparse_V").uncheck().run()  # faces off: fewer layers, fewer FLOPs
    assert not at.exception and len(at.get("plotly_chart")) < n_charts
    table = at.dataframe[0].value
    assert list(table["modality"]) == ["text", "spectrogram", "visual"]
    assert table.loc[table["modality"] == "visual", "weight in the sum"].item() == 0
    # beside each mask, the same points' Integrated Gradients and the share the kept points hold
    at.checkbox(key="sparse_V").check().run()
    at.toggle(key="sparse_ig").set_value(True).run()
    assert not at.exception and not at.error
    drawn = [c.proto.id for c in at.get("plotly_chart")]
    ig = [c for c in at.get("plotly_chart") if "of the attribution" in c.proto.spec]
    masks = [c for c in at.get("plotly_chart") if "points kept" in c.proto.spec]
    assert ig and len(ig) == len(masks), (len(ig), len(masks), len(drawn))


def test_the_server_script_starts_the_warm_up_when_the_server_starts(monkeypatch):
    """``streamlit run app.py`` serves home.py through app.py's ``st.App``, whose lifespan starts
    the models' warm-up once per process, before any page is opened."""
    import asyncio
    import importlib.util
    import threading

    from streamlit.web.server.app_discovery import discover_asgi_app

    from ser_core import server_start, ui

    found = discover_asgi_app(REPO / "app.py")
    assert found.is_asgi_app and found.app_name == "app"
    spec = importlib.util.spec_from_file_location("ser_app_under_test", REPO / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.app.script_path.resolve() == ui.APP_SCRIPT == REPO / "home.py"

    started = threading.Event()
    monkeypatch.setattr(server_start, "_started", threading.Event())
    monkeypatch.setattr(ui, "start_server_work", started.set)

    async def serve() -> None:
        async with module.lifespan(module.app):
            assert started.wait(timeout=60)

    asyncio.run(serve())
    assert server_start.start_warm_up() is None  # once per process

    # the background threads' "missing ScriptRunContext" warnings stay out of the teacher's terminal
    import logging

    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    logger = logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context")
    heard: dict[str, int] = {}

    class Count(logging.Handler):
        def emit(self, record):
            heard[threading.current_thread().name] = heard.get(threading.current_thread().name, 0) + 1

    handler = Count()
    logger.addHandler(handler)
    try:
        for name in ("ser-warm-up", "a visitor's thread"):
            t = threading.Thread(target=get_script_run_ctx, name=name)
            t.start()
            t.join()
    finally:
        logger.removeHandler(handler)
    assert "ser-warm-up" not in heard and heard.get("a visitor's thread") == 1


def test_warm_up_loads_the_default_model_and_whisper_once(monkeypatch):
    """What the first page of a server starts in the background: afterwards the first analysis
    of an uploaded clip finds the model, the encoders and Whisper loaded, and the first deletion
    test finds Captum imported and the model's backward pass run once."""
    import sys

    from ser_core import asr, attribution, ui
    from ser_core.audio import load_audio

    assert ui.warm_up() > 0
    assert ("tiny.en", "cpu") in asr._whisper_cache
    assert "captum.attr" in sys.modules
    analyzer = ui.get_analyzer(ui.default_checkpoint())
    assert analyzer is ui.get_analyzer(ui.default_checkpoint())  # one per server
    # the first sample's Integrated Gradients were computed by the warm-up (a real run: cached now)
    sample = ui.SAMPLES_DIR / ui.sample_clips()[0]["path"]
    again = analyzer.analyze(load_audio(sample.read_bytes()))
    monkeypatch.setattr(attribution, "compute_attribution", lambda *a, **k: pytest.fail("computed again"))
    details = again.attribution_details("integrated_gradients")
    assert details.frames is not None and np.isfinite(details.frames).all()
    # the Models page's cards are made too: asking again counts no FLOPs
    from ser_core import model_card

    original = model_card.model_card
    model_card.model_card = lambda path: pytest.fail(f"{path}: the card was made again")
    try:
        for path in ui.list_all_checkpoints():
            assert ui.model_card_of(path).checkpoint
    finally:
        model_card.model_card = original


def test_warm_up_makes_the_model_cards_only_while_no_analysis_runs(monkeypatch):
    """A visitor's analysis started during the warm-up gets the cores: the warm-up's own Whisper
    run, its sample analysis and the cards wait for it, and the cards run at the lowest priority."""
    import threading
    import time

    from ser_core import ui

    import os
    import sys

    made, asked, niceness = [], [], []

    def card(path):
        made.append(time.monotonic())
        if sys.platform.startswith("linux"):
            niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    monkeypatch.setattr(ui, "model_card_of", card)
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) if sys.platform.startswith("linux") else None
    line = ui.analysis_queue()
    counts = line.counts
    monkeypatch.setattr(line, "counts", lambda: asked.append(1) or counts())
    ticket = line.submit("a visitor")
    assert line.wait_turn(ticket, timeout=5)  # running
    warm = threading.Thread(target=ui.warm_up, kwargs={"yield_for_cards": True})
    warm.start()
    deadline = time.monotonic() + 120
    while not asked and time.monotonic() < deadline:  # the warm-up has reached the cards
        time.sleep(0.05)
    time.sleep(0.5)
    assert asked and not made  # … and waits while the visitor's analysis runs
    finished = time.monotonic()
    line.finish(ticket, completed=True)
    warm.join(timeout=120)
    assert not warm.is_alive()
    assert len(made) == len(ui.list_all_checkpoints()) and min(made) >= finished
    # the cards are made at the lowest priority, by the warm-up's thread alone
    assert all(n == 19 for n in niceness)
    if sys.platform.startswith("linux"):  # … and no other thread
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own


def test_pickers_list_trained_checkpoints_newest_first_then_the_shipped_default_first(tmp_path, monkeypatch):
    """A fresh clone gives every shipped file the checkout's time: their order is by name, after
    the default; the ones trained here come first, newest first."""
    import os

    from ser_core import paths
    from ser_core.checkpoint import DEFAULT_CHECKPOINT_NAME, list_all_checkpoints

    shipped, trained = tmp_path / "shipped", tmp_path / "trained"
    for folder, names in ((shipped, ["b.safetensors", DEFAULT_CHECKPOINT_NAME, "a.safetensors"]),
                          (trained, ["old.safetensors", "new.safetensors"])):
        folder.mkdir()
        for i, name in enumerate(names):
            (folder / name).write_bytes(b"")
            os.utime(folder / name, (1_000 + i, 1_000 + i))  # later in the list = newer
    monkeypatch.setattr(paths, "CHECKPOINTS_DIR", shipped)
    monkeypatch.setenv("SER_CHECKPOINTS_DIR", str(trained))
    assert [p.name for p in list_all_checkpoints()] == [
        "new.safetensors", "old.safetensors", DEFAULT_CHECKPOINT_NAME, "a.safetensors", "b.safetensors"]


def test_the_background_warm_up_stops_between_its_steps_when_the_process_exits():
    """At exit (atexit) the warm-up is told to stop and waited for: one waiting for a visitor's
    analysis, or about to start its next step, raises Cancelled instead of going on (a daemon thread
    killed inside a backward pass would abort the interpreter)."""
    import threading

    from ser_core import ui
    from ser_core.analysis_queue import Cancelled

    class Busy:  # a visitor's analysis running all along
        def counts(self):
            return (1, 0)

    outcome = []

    def step():
        try:
            ui._while_analyses_run(Busy())
            outcome.append("went on")
        except Cancelled:
            outcome.append("stopped")

    thread = threading.Thread(target=step, daemon=True)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive() and not outcome  # waiting for the visitor
    try:
        ui._stop_warm_up(thread, timeout=5)
        assert not thread.is_alive() and outcome == ["stopped"]
        with pytest.raises(Cancelled):  # no further step starts either
            ui._while_analyses_run(Busy())
    finally:
        ui._WARM_UP_STOP.clear()
