"""Attributions (ser_core.attribution) on every shipped checkpoint: shapes and axes, IG
completeness, rollout, and the per-utterance cache."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
CHECKPOINTS = sorted((REPO / "checkpoints").glob("*.safetensors"))
ROWS = list(csv.DictReader(open(REPO / "samples" / "manifest.csv")))
SAMPLE = next(r for r in ROWS if r["video"])  # a ~3 s clip with a face video (MESM sees it)

pytestmark = pytest.mark.skipif(not CHECKPOINTS, reason="no shipped checkpoints")


@pytest.fixture(scope="module")
def analyses(cache):
    """One Analysis of the sample per shipped checkpoint (made on first use)."""
    from ser_core.pipeline import Analyzer

    made = {}

    def get(path: Path):
        if path not in made:
            analyzer = Analyzer(path, device="cpu")
            made[path] = analyzer.analyze(REPO / "samples" / SAMPLE["path"], transcript=SAMPLE["transcript"],
                                          video=REPO / "samples" / SAMPLE["video"])
        return made[path]

    return get


@pytest.mark.parametrize("path", CHECKPOINTS, ids=lambda p: p.stem)
def test_attributions_have_the_trace_axes(path, analyses):
    from ser_core.attribution import FRAME_AXES, METHODS
    from ser_core.models.base import model_axis_labels

    analysis = analyses(path)
    model = analysis.analyzer.model
    name = analysis.analyzer.model_name
    axes = analysis.attribution_axes()
    frame_axis = model_axis_labels(model, analysis.features)[FRAME_AXES[name]]
    assert axes["frames"].names == frame_axis.names
    if analysis.trace.records:  # the frame axis is one the trace's records use (FE2E has none)
        used = {r.key_modality for r in analysis.trace.records} | {r.query_modality for r in analysis.trace.records}
        assert FRAME_AXES[name] in used
    for method in METHODS:
        scores = analysis.attribution(method)
        assert set(scores) == {"words", "frames"}
        assert scores["frames"].shape == (len(frame_axis),)
        assert np.isfinite(scores["frames"]).all()
        if name == "ks_transformer":
            words = [w.text for w in analysis.features.words]
            assert axes["words"].names == words == analysis.trace["ccab_a2t.0.cross"].key_labels.names
            assert scores["words"].shape == (len(words),) and np.isfinite(scores["words"]).all()
        else:
            assert scores["words"] is None and axes["words"] is None
        if method == "rollout":  # shares of the input, words and frames together
            total = scores["frames"].sum() + (0 if scores["words"] is None else scores["words"].sum())
            assert total == pytest.approx(1.0, abs=1e-6)
            assert (scores["frames"] >= 0).all()
    details = analysis.attribution_details("integrated_gradients")
    assert details.f_input == pytest.approx(float(analysis.confidence), abs=1e-4)
    assert details.label == analysis.predicted


@pytest.mark.parametrize("stem, keep_ratio, tolerance", [
    ("ks_transformer_demo", 1.0, 0.01),  # vanilla attention: smooth, so IG is complete
    ("ilt_demo", None, 0.02),
    ("mfsn_demo", None, 0.01),
])
def test_integrated_gradients_completeness(stem, keep_ratio, tolerance, analyses):
    """Σ scores = f(x) − f(baseline) (Sundararajan et al.'s completeness), checked directly."""
    path = REPO / "checkpoints" / f"{stem}.safetensors"
    if not path.exists():
        pytest.skip(f"{path.name} not shipped")
    analysis = analyses(path)
    if keep_ratio is not None:
        analysis = analysis.rerun(keep_ratio=keep_ratio)
    d = analysis.attribution_details("integrated_gradients")
    gap = d.f_input - d.f_baseline
    assert d.f_input == pytest.approx(float(analysis.probs[d.target]), abs=1e-4)
    assert abs(d.total - gap) < tolerance, (d.total, gap)
    assert d.delta == pytest.approx(d.total - gap)
    if stem.startswith("ks_transformer"):  # every attributed input lies on the word or frame axis
        scores = analysis.attribution("integrated_gradients")
        assert scores["words"].sum() + scores["frames"].sum() == pytest.approx(d.total, abs=1e-4)


def test_attribution_is_cached_per_utterance_and_setting(analyses, monkeypatch):
    path = REPO / "checkpoints" / "ks_transformer_demo.safetensors"
    if not path.exists():
        pytest.skip("no KS-Transformer checkpoint")
    base = analyses(path).rerun(keep_ratio=0.45)  # a setting no other test attributes
    model = base.analyzer.model
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    first = base.attribution("integrated_gradients")
    assert len(calls) > 0
    again = base.rerun(keep_ratio=0.45)
    n_rerun = len(calls)
    second = again.attribution("integrated_gradients")  # the same utterance and setting: no model run
    assert len(calls) == n_rerun
    np.testing.assert_array_equal(first["frames"], second["frames"])
    np.testing.assert_array_equal(first["words"], second["words"])
    other = base.rerun(keep_ratio=0.3)
    n_other = len(calls)
    other.attribution("integrated_gradients")  # another setting: computed afresh
    assert len(calls) > n_other


def test_rollout_matrix_is_the_product_of_residual_maps():
    from ser_core.attribution import rollout_matrix

    rng = np.random.default_rng(0)
    maps = [rng.dirichlet(np.ones(5), size=(2, 5)) for _ in range(3)]  # [heads, T, T], rows sum to 1
    R = rollout_matrix(maps)
    expected = np.eye(5)
    for A in maps:
        expected = (0.5 * A.mean(0) + 0.5 * np.eye(5)) @ expected
    np.testing.assert_allclose(R, expected)
    np.testing.assert_allclose(R.sum(axis=1), 1.0)
    np.testing.assert_allclose(rollout_matrix([np.eye(4)[None]]), np.eye(4))


def test_project_by_time_keeps_the_total():
    from ser_core.attribution import project_by_time
    from ser_core.trace import AxisLabels

    coarse = AxisLabels("frames", ["a", "b"], np.array([0.0, 0.08]), np.array([0.08, 0.16]))
    fine = AxisLabels("frames", list("wxyz"), np.arange(4) * 0.04, np.arange(1, 5) * 0.04)
    out = project_by_time(np.array([2.0, 4.0]), coarse, fine)
    np.testing.assert_allclose(out, [1.0, 1.0, 2.0, 2.0])
    np.testing.assert_allclose(project_by_time(out, fine, coarse), [2.0, 4.0])


def test_unknown_method_is_an_input_error(analyses):
    from ser_core.errors import InputError

    path = REPO / "checkpoints" / "ks_transformer_demo.safetensors"
    if not path.exists():
        pytest.skip("no KS-Transformer checkpoint")
    with pytest.raises(InputError, match="integrated_gradients"):
        analyses(path).attribution("saliency")


def test_mesm_point_attributions_are_the_chunk_scores_spread_over_the_points_the_nucleus_chooses(analyses):
    """MESM's Integrated Gradients per input point (what the Sparse masks page pools onto each
    layer's grid): summed per chunk they are the frame scores; a face's point map per face crop."""
    from ser_core.attribution import kept_share, points_on_grid

    path = REPO / "checkpoints" / "mesm_demo.safetensors"
    if not path.exists():
        pytest.skip("no shipped MESM checkpoint")
    analysis = analyses(path)
    ig = analysis.attribution_details("integrated_gradients")
    points = ig.extras["points"]
    assert set(points) == {"spectrogram", "visual"}
    np.testing.assert_allclose(points["spectrogram"].sum(axis=(1, 2)), ig.frames, rtol=1e-6, atol=1e-9)
    shapes = analysis.trace.extras["map_shapes"]
    for record in (r for r in analysis.trace.records if r.kind == "nucleus"):
        grid = shapes[record.name]
        maps = points[record.query_modality]
        assert len(maps) == record.keep.shape[1], record.name  # one map per query item the layer has
        scores = points_on_grid(maps[0], grid)
        assert scores.shape == tuple(grid) and np.isclose(scores.sum(), maps[0].sum())
        held, kept = kept_share(scores, record.keep[0, 0].reshape(grid))
        assert 0 <= held <= 1 and 0 < kept <= 1


def test_points_on_grid_and_kept_share():
    from ser_core.attribution import kept_share, points_on_grid
    from ser_core.errors import InputError

    points = np.arange(16.0).reshape(4, 4)
    np.testing.assert_array_equal(points_on_grid(points, (2, 2)), [[10, 18], [42, 50]])
    with pytest.raises(InputError):
        points_on_grid(points, (3, 2))
    scores = np.array([[3.0, -1.0], [0.0, 0.0]])
    assert kept_share(scores, np.array([[True, False], [False, False]])) == (0.75, 0.25)
    assert kept_share(np.zeros((2, 2)), np.ones((2, 2), bool)) == (0.0, 1.0)


def test_the_same_attribution_asked_by_several_sessions_at_once_is_computed_once(analyses, monkeypatch):
    """A class on the same sample clip: the sessions that ask while it is being computed wait for
    that result; a computation that fails leaves the next asker to try again."""
    import threading

    from ser_core import attribution

    path = REPO / "checkpoints" / "ks_transformer_demo.safetensors"
    if not path.exists():
        pytest.skip("no KS-Transformer checkpoint")
    base = analyses(path).rerun(keep_ratio=0.4)  # a setting no other test attributes
    real = attribution.compute_attribution
    calls, started, release = [], threading.Event(), threading.Event()

    def slow(*a, **k):
        calls.append(1)
        started.set()
        release.wait(30)
        if len(calls) == 1:
            raise RuntimeError("the first computation fails")
        return real(*a, **k)

    monkeypatch.setattr(attribution, "compute_attribution", slow)
    results, errors = [], []

    def ask():
        try:
            results.append(base.attribution("integrated_gradients"))
        except RuntimeError as e:
            errors.append(str(e))

    first = threading.Thread(target=ask)
    first.start()
    assert started.wait(30)
    others = [threading.Thread(target=ask) for _ in range(3)]
    for t in others:
        t.start()
    for t in others:  # each has asked (it is waiting, or about to)
        t.join(0.3)
    assert len(calls) == 1  # the three others wait instead of computing
    release.set()
    for t in [first, *others]:
        t.join(60)
    assert errors == ["the first computation fails"]  # its own caller hears of it …
    assert len(calls) == 2 and len(results) == 3  # … one waiter computes, the two others get its result
    for r in results[1:]:
        np.testing.assert_array_equal(r["frames"], results[0]["frames"])
