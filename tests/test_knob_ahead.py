"""The slider's next position computed ahead (ser_core.knob_ahead): the same result as running
it when asked, only the newest position wanted is run, and the Analyze page uses it."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import REPO
from ser_core.knob_ahead import RunsAhead, knob_setting

CHECKPOINT = REPO / "checkpoints" / "ks_transformer_demo.safetensors"
pytestmark = pytest.mark.skipif(not CHECKPOINT.exists(), reason="shipped checkpoint missing")


@pytest.fixture(scope="module")
def base():
    from ser_core.pipeline import Analyzer

    wav = REPO / "samples" / "wav" / "demo_00384.wav"
    return Analyzer(str(CHECKPOINT)).analyze(str(wav), transcript="We were all livid after the exam")


def _same(a, b) -> None:
    """The same model run (a thread's math library may split a sum otherwise: the last bits)."""
    np.testing.assert_allclose(a.probs, b.probs, rtol=1e-5, atol=1e-7)
    for ra, rb in zip(a.trace.records, b.trace.records):
        assert ra.name == rb.name and ra.keep_ratio == rb.keep_ratio
        assert (ra.keep is None) == (rb.keep is None)
        if ra.keep is not None:
            assert np.array_equal(ra.keep, rb.keep), ra.name


def test_knob_setting_names_the_models_knob_and_its_value(base):
    assert knob_setting(base) == ("keep_ratio", 0.5)
    assert knob_setting(base.rerun(keep_ratio=0.35)) == ("keep_ratio", 0.35)


def test_a_run_computed_ahead_is_the_run_the_page_would_make(base):
    runs = RunsAhead()
    assert runs.take(base, {"keep_ratio": 0.3}) is None
    assert runs.start(base, {"keep_ratio": 0.3}, delay=0.0) is not None
    assert runs.start(base, {"keep_ratio": 0.3}, delay=0.0) is None  # under way: not twice
    runs.thread.join(timeout=60)
    ahead = runs.take(base, {"keep_ratio": 0.3})
    assert ahead is not None and ahead.keep_ratio == 0.3
    _same(ahead, base.rerun(keep_ratio=0.3))
    assert runs.take(base, {"keep_ratio": 0.25}) is None
    assert runs.start(base, {"keep_ratio": 0.3}) is None  # done already
    runs.forget()  # another clip on the page
    assert runs.take(base, {"keep_ratio": 0.3}) is None


def test_only_the_newest_position_asked_for_is_run(base):
    runs = RunsAhead()
    first = runs.start(base, {"keep_ratio": 0.2}, delay=0.5)
    runs.start(base, {"keep_ratio": 0.15}, delay=0.0)  # the slider moved on before the first began
    first.join(timeout=60)
    runs.thread.join(timeout=60)
    assert runs.take(base, {"keep_ratio": 0.2}) is None
    _same(runs.take(base, {"keep_ratio": 0.15}), base.rerun(keep_ratio=0.15))


def test_analyze_page_runs_the_next_step_ahead_and_uses_it(monkeypatch):
    from streamlit.testing.v1 import AppTest

    from ser_core.pipeline import Analysis

    asked: list[float] = []  # every keep_ratio the model is re-run at, by the page or ahead of it
    rerun = Analysis.rerun
    monkeypatch.setattr(Analysis, "rerun", lambda self, **kw: asked.append(kw.get("keep_ratio")) or rerun(self, **kw))

    at = AppTest.from_file(str(REPO / "pages" / "1_Analyze.py"), default_timeout=180).run()
    at.button(key="analyze_button").click().run()
    assert not at.exception
    runs = at.session_state["_runs_ahead_analyze"]
    assert runs.thread is None and not asked  # nothing computed ahead before the slider moves
    at.slider(key="analyze_keep_ratio").set_value(0.45).run()
    runs.thread.join(timeout=60)
    assert asked == [0.45, 0.4]  # the page's run, then the next step down, ahead
    at.slider(key="analyze_keep_ratio").set_value(0.4).run()
    assert not at.exception
    assert at.session_state["_knob_last_analyze"][1] == 0.4
    runs.thread.join(timeout=60)
    assert asked == [0.45, 0.4, 0.35]  # 0.40 was not run again; 0.35 was started ahead
    base = at.session_state["analysis"]
    assert runs.take(base, {"keep_ratio": 0.35}) is not None


def test_nothing_is_run_ahead_when_the_model_is_slow_on_the_clip(monkeypatch):
    """A long clip's run holds the model every visitor shares for seconds: not run ahead then."""
    from streamlit.testing.v1 import AppTest

    from ser_core import knob_ahead

    monkeypatch.setattr(knob_ahead, "MAX_MODEL_SECONDS", 0.0)
    at = AppTest.from_file(str(REPO / "pages" / "1_Analyze.py"), default_timeout=180).run()
    at.button(key="analyze_button").click().run()
    for value in (0.45, 0.4):
        at.slider(key="analyze_keep_ratio").set_value(value).run()
        assert not at.exception
    assert at.session_state["_runs_ahead_analyze"].thread is None
