"""Views read only the trace: hand-built records → figures, tables and exports."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from ser_core import viz
from ser_core.asr import Word
from ser_core.trace import AttentionRecord, AttentionTrace, AxisLabels

WORDS = ["I", "am", "really", "furious", "today"]


def _words() -> AxisLabels:
    start = np.arange(5, dtype=np.float32) * 0.3
    return AxisLabels("words", WORDS, start, start + 0.25)


def _frames(n: int) -> AxisLabels:
    t = np.arange(n, dtype=np.float32) * 0.02
    return AxisLabels("frames", [f"{x:.2f} s" for x in t], t - 0.01, t + 0.01)


def _record(q: AxisLabels, k: AxisLabels, heads: int = 2, keep_ratio: float = 0.4, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.random((heads, len(q), len(k))).astype(np.float32)
    w /= w.sum(-1, keepdims=True)
    scores = w.sum(1)
    n = max(1, int(keep_ratio * len(k)))
    thr = np.sort(scores, -1)[:, -n][:, None]
    keep = scores >= thr
    return AttentionRecord("ccab.0.cross", "key-sparse", "audio", "text", w * keep[:, None, :], q, k,
                           key_scores=scores, keep=keep, keep_ratio=keep_ratio)


def test_word_by_word_heatmap_marks_dropped_keys():
    rec = _record(_words(), _words())
    fig = viz.attention_heatmap(rec, head=0)
    heat = [t for t in fig.data if t.type == "heatmap"][0]
    assert np.asarray(heat.z).shape == (5, 5)
    text = json.dumps(fig.to_plotly_json(), default=str)
    assert "furious" in text
    assert "keep_ratio 0.40" in fig.layout.title.text


def test_frame_axis_is_time_and_large_maps_are_pooled_keeping_max():
    rec = _record(_frames(1000), _frames(1000), heads=1, keep_ratio=1.0)
    fig = viz.attention_heatmap(rec, head=0, max_cells=100)
    heat = [t for t in fig.data if t.type == "heatmap"][0]
    z = np.asarray(heat.z, dtype=float)
    assert z.shape[0] <= 100 and z.shape[1] <= 100
    assert z.max() == pytest.approx(float(rec.weights[0].max()), rel=1e-5)
    assert "max-pooled" in fig.layout.title.text
    assert "s" in (fig.layout.xaxis.title.text or "")


def test_key_importance_threshold_is_the_nth_largest_score():
    rec = _record(_frames(3), _words(), heads=2, keep_ratio=0.4)
    fig = viz.key_importance_figure(rec, head=1)
    threshold, n = viz.top_k_threshold(rec.key_scores[1], 0.4)
    assert n == 2 and threshold == pytest.approx(np.sort(rec.key_scores[1])[-2])
    shapes_and_lines = json.dumps(fig.to_plotly_json(), default=str)
    assert f"{threshold:.3f}"[:4] in shapes_and_lines
    kept_traces = [t for t in fig.data if t.type == "bar"]
    assert len(kept_traces) >= 2  # kept and dropped keys in their own colours


def test_waveform_and_spectrogram_place_words_and_kept_frames():
    audio = np.sin(np.linspace(0, 600, 16000)).astype(np.float32) * 0.3
    words = [Word(w, 0.2 * i, 0.2 * i + 0.15) for i, w in enumerate(WORDS)]
    rec = _record(_words(), _frames(50), heads=2, keep_ratio=0.2)
    wf = viz.waveform_figure(audio, 16000, words, record=rec)
    text = json.dumps(wf.to_plotly_json(), default=str)
    assert "furious" in text and "kept" in text
    spec = viz.spectrogram_figure(np.random.rand(40, 100), np.arange(100) * 0.01, words, record=rec)
    assert any(t.type == "heatmap" for t in spec.data)


def test_probabilities_curve_and_confusion_matrix():
    labels = ["ang", "hap", "neu", "sad"]
    fig = viz.probabilities_figure(labels, np.array([0.1, 0.6, 0.2, 0.1]))
    assert "hap" in json.dumps(fig.to_plotly_json(), default=str)
    curve = viz.probability_curve_figure([0.1, 0.5, 1.0], np.full((3, 4), 0.25), labels)
    assert len(curve.data) == 4
    cm = viz.confusion_matrix_figure(np.array([[3, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1], [0, 0, 0, 4]]), labels, True)
    z = np.asarray([t for t in cm.data if t.type == "heatmap"][0].z, dtype=float)
    np.testing.assert_allclose(z.sum(1), 100 * np.ones(4), rtol=1e-6) if z.max() > 1 else np.testing.assert_allclose(z.sum(1), np.ones(4))


def test_word_importance_html_marks_kept_words():
    html = viz.word_importance_html(WORDS, np.array([0.1, 0.2, 0.3, 2.0, 0.1]), np.array([0, 0, 0, 1, 0], bool))
    assert html.count("furious") == 1 and "<" in html
    with pytest.raises(Exception):
        viz.word_importance_html(WORDS, np.ones(3))


def test_exports_csv_json_png():
    rec = _record(_words(), _frames(4), heads=2)
    csv_text = viz.record_to_csv(rec, head="mean")
    lines = csv_text.strip().splitlines()
    assert len(lines) == 1 + 5 * 4
    assert "weight" in lines[0] and "kept" in lines[0]
    trace = AttentionTrace("ks_transformer", [rec])
    back = json.loads(viz.trace_to_json(trace))
    assert back["records"][0]["name"] == "ccab.0.cross"
    png = viz.figure_to_png(viz.attention_heatmap(rec), width=400, height=300)
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (400, 300)
