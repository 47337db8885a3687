"""Views read only hand-built trace records: check each figure's data, the exports and PNGs."""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from PIL import Image

from ser_core import viz
from ser_core.asr import Word
from ser_core.errors import InputError
from ser_core.trace import AttentionRecord, AttentionTrace, AxisLabels

WORDS = [Word(t, 0.3 * i + 0.1, 0.3 * i + 0.35) for i, t in
         enumerate("i am so happy to see you today".split())]
FRAME = 0.02


def word_labels() -> AxisLabels:
    return AxisLabels("words", [w.text for w in WORDS], np.array([w.start for w in WORDS]),
                      np.array([w.end for w in WORDS]))


def frame_labels(n: int) -> AxisLabels:
    start = np.arange(n) * FRAME
    return AxisLabels("frames", [f"{s:.2f} s" for s in start], start, start + FRAME)


def key_sparse_record(query: AxisLabels, key: AxisLabels, heads: int = 2, keep_ratio: float = 0.3,
                      seed: int = 0, name: str = "ccab1.cross") -> AttentionRecord:
    """A key-sparse record built by the paper's rule: keep keys scoring ≥ the n-th largest."""
    rng = np.random.default_rng(seed)
    w = rng.random((heads, len(query), len(key))) ** 3
    w /= w.sum(-1, keepdims=True)
    scores = w.sum(axis=1)
    n = max(1, math.floor(keep_ratio * len(key)))
    nth = np.sort(scores, axis=1)[:, ::-1][:, n - 1:n]
    keep = scores >= nth
    return AttentionRecord(name, "key-sparse", "text", "audio", w * keep[:, None, :], query, key,
                           key_scores=scores, keep=keep, keep_ratio=keep_ratio)


@pytest.fixture(scope="module")
def word_frame() -> AttentionRecord:
    return key_sparse_record(word_labels(), frame_labels(150))


@pytest.fixture(scope="module")
def word_word() -> AttentionRecord:
    return key_sparse_record(word_labels(), word_labels(), name="text.self")


def heatmap_trace(fig: go.Figure) -> go.Heatmap:
    return next(t for t in fig.data if isinstance(t, go.Heatmap))


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.size


# --------------------------------------------------------------------------- heatmaps


def test_word_word_heatmap_axes_hover_and_dropped(word_word):
    fig = viz.attention_heatmap(word_word, head=0)
    heat = heatmap_trace(fig)
    assert np.allclose(np.asarray(heat.z), word_word.weights[0])
    assert fig.layout.xaxis.title.text == "key words"
    assert fig.layout.yaxis.title.text == "query words"
    assert list(fig.layout.xaxis.ticktext) == [w.text for w in WORDS]
    assert fig.layout.yaxis.range[0] > fig.layout.yaxis.range[1]  # first query on top
    # word axes are categories (word and times, unique): the hover reads them, no text per cell
    assert heat.text is None and heat.hovertemplate.startswith("query: %{y}<br>key: %{x}")
    assert fig.layout.xaxis.type == "category" and list(heat.x) == list(fig.layout.xaxis.categoryarray)
    assert heat.y[3].startswith("happy (") and heat.x[5].startswith("see (") and "0.40 s" in heat.x[1]
    assert list(fig.layout.xaxis.tickvals) == list(heat.x)
    dropped = next(t for t in fig.data if isinstance(t, go.Bar))
    assert dropped.marker.pattern.shape == "/"
    assert list(dropped.x) == [heat.x[i] for i in np.flatnonzero(~word_word.keep[0])]
    assert dropped.yaxis == "y2" and set(dropped.y) == {1.0} and fig.layout.yaxis2.range == (0, 1)


def test_word_frame_heatmap_uses_seconds(word_frame):
    fig = viz.attention_heatmap(word_frame, head=1)
    heat = heatmap_trace(fig)
    assert fig.layout.xaxis.title.text == "key time (s)"
    x = np.asarray(heat.x)
    assert np.allclose(x, np.arange(150) * FRAME + FRAME / 2)
    assert fig.layout.xaxis.range[1] == pytest.approx(150 * FRAME)
    # hover: the key's time from x, the query word from the categorical y axis (no per-cell text)
    assert "key %{x:.3f} s" in heat.hovertemplate and "query: %{y}" in heat.hovertemplate
    assert heat.text is None and fig.layout.yaxis.type == "category" and heat.y[0].startswith("i (")
    bar = next(t for t in fig.data if isinstance(t, go.Bar))
    assert np.allclose(np.asarray(bar.x), x[~word_frame.keep[1]])
    assert np.allclose(np.asarray(bar.width), FRAME)


def test_mean_head_marks_keys_dropped_by_every_head(word_frame):
    fig = viz.attention_heatmap(word_frame, head="mean")
    bar = next(t for t in fig.data if isinstance(t, go.Bar))
    dropped_all = ~word_frame.keep.any(axis=0)
    assert len(bar.x) == int(dropped_all.sum())
    assert np.allclose(np.asarray(heatmap_trace(fig).z), word_frame.weights.mean(axis=0))


def test_large_map_is_max_pooled_under_cap():
    n = 1500
    rng = np.random.default_rng(1)
    w = rng.random((1, n, n)).astype(np.float32) * 0.5
    w[0, 1234, 77] = 3.0
    rec = AttentionRecord("audio.self", "self", "audio", "audio", w, frame_labels(n),
                          frame_labels(n))
    fig = viz.attention_heatmap(rec, head=0, max_cells=400)
    z = np.asarray(heatmap_trace(fig).z)
    assert z.shape[0] <= 400 and z.shape[1] <= 400
    assert z.max() == pytest.approx(3.0)
    assert z.max() == pytest.approx(w.max())
    assert "max-pooled over 4×4 blocks" in fig.layout.title.text
    x = np.asarray(heatmap_trace(fig).x)
    assert x[0] == pytest.approx(2 * FRAME) and x[-1] < n * FRAME  # block centres, seconds
    assert fig.layout.xaxis.title.text == "key time (s)"
    assert "%{x" in heatmap_trace(fig).hovertemplate


def test_max_pool_matches_blockwise_max():
    z = np.arange(35, dtype=float).reshape(5, 7)
    pooled = viz.max_pool_2d(z, 2, 3)
    assert pooled.shape == (3, 3)
    assert pooled[0, 0] == z[:2, :3].max() and pooled[2, 2] == z[4:, 6:].max()


def test_nucleus_cells_greyed():
    rng = np.random.default_rng(2)
    w = rng.random((1, 6, 9))
    keep = rng.random((6, 9)) > 0.5
    rec = AttentionRecord("mesm.nucleus", "nucleus", "audio", "audio", w * keep,
                          AxisLabels("patches", [f"q{i}" for i in range(6)]),
                          AxisLabels("patches", [f"k{i}" for i in range(9)]), keep=keep,
                          top_p=0.7)
    fig = viz.attention_heatmap(rec, 0)
    overlay = [t for t in fig.data if isinstance(t, go.Heatmap)][1]
    z = np.asarray(overlay.z, dtype=float)
    assert np.array_equal(np.isnan(z), keep)  # grey only where dropped
    assert "top_p 0.70" in fig.layout.title.text


def test_bad_head_and_record_raise(word_word):
    with pytest.raises(InputError):
        viz.attention_heatmap(word_word, head=5)
    with pytest.raises(InputError):
        viz.attention_heatmap(word_word, head="max")
    broken = AttentionRecord("x", "self", "text", "text", np.ones((2, 3)), word_labels(),
                             word_labels())
    with pytest.raises(InputError):
        viz.attention_heatmap(broken, 0)


# --------------------------------------------------------------------------- key scores


@pytest.mark.parametrize("keep_ratio", [0.1, 0.3, 0.5, 1.0])
def test_key_importance_threshold_is_nth_largest(keep_ratio):
    rec = key_sparse_record(word_labels(), frame_labels(90), keep_ratio=keep_ratio, seed=3)
    fig = viz.key_importance_figure(rec, head=1)
    scores = rec.key_scores[1]
    n = max(1, math.floor(keep_ratio * 90))
    line = next(s for s in fig.layout.shapes if s.type == "line")
    assert line.y0 == pytest.approx(np.sort(scores)[::-1][n - 1])
    kept = next(t for t in fig.data if t.name == "kept key")
    assert len(kept.x) == int(rec.keep[1].sum())
    if keep_ratio < 1:
        dropped = next(t for t in fig.data if t.name == "dropped key")
        assert np.all(np.asarray(dropped.y) < line.y0)
        assert kept.marker.color != dropped.marker.color
    assert f"keep_ratio {keep_ratio:.2f}" in fig.layout.title.text
    assert f"{int(rec.keep[1].sum())} kept / 90" in fig.layout.title.text
    assert fig.layout.xaxis.title.text == "key time (s)"


def test_key_importance_without_mask_uses_keep_ratio():
    rec = key_sparse_record(word_labels(), word_labels(), heads=1, keep_ratio=0.5, seed=4)
    rec.keep = None
    fig = viz.key_importance_figure(rec, 0)
    line = next(s for s in fig.layout.shapes if s.type == "line")
    assert line.y0 == pytest.approx(np.sort(rec.key_scores[0])[::-1][3])
    assert "happy" in " ".join(fig.layout.xaxis.ticktext)


# --------------------------------------------------------------------------- audio views


def test_kept_intervals_merge_contiguous_frames():
    keep = np.zeros((1, 10), bool)
    keep[0, [1, 2, 3, 7]] = True
    rec = AttentionRecord("a", "key-sparse", "audio", "audio", np.ones((1, 2, 10)),
                          frame_labels(2), frame_labels(10), keep=keep, keep_ratio=0.4)
    spans = viz.kept_intervals(rec, 0)
    assert spans == [pytest.approx((0.02, 0.08)), pytest.approx((0.14, 0.16))]


def _band_spans(fig, color: str) -> list[tuple[float, float]]:
    """The (start, end) of each filled rectangle in the figure's one band trace of ``color``."""
    trace = next((t for t in fig.data if getattr(t, "fillcolor", None) == color), None)
    if trace is None:
        return []
    xs = list(trace.x)
    return [(xs[i], xs[i + 2]) for i in range(0, len(xs), 6)]


def test_waveform_figure_shades_kept_and_places_words(word_frame):
    sr = 16000
    audio = np.sin(np.linspace(0, 300, 3 * sr)) * 0.5
    fig = viz.waveform_figure(audio, sr, WORDS, record=word_frame, head=0)
    spans = viz.kept_intervals(word_frame, 0)
    assert np.allclose(_band_spans(fig, viz.KEPT_COLOR), spans)  # all spans in one trace
    assert not fig.layout.shapes
    marks = next(t for t in fig.data if t.name == "words")  # one text trace, no annotations
    assert not fig.layout.annotations and marks.mode == "text" and marks.cliponaxis is False
    assert list(marks.text) == [w.text for w in WORDS]
    assert marks.x[3] == pytest.approx((WORDS[3].start + WORDS[3].end) / 2)
    assert fig.layout.xaxis.title.text == "time (s)"
    wave = next(t for t in fig.data if t.name == "waveform")
    # above the waveform, inside the axis range (plotly does not draw text beyond it)
    assert np.max(np.abs(wave.y)) < min(marks.y) <= max(marks.y) < fig.layout.yaxis.range[1]
    assert len(wave.x) <= viz.MAX_WAVEFORM_POINTS  # envelope, not 48k points
    assert np.max(wave.y) == pytest.approx(audio.max(), rel=1e-3)
    with pytest.raises(InputError):
        viz.waveform_figure(np.array([]), sr)
    with pytest.raises(InputError):
        viz.waveform_figure(audio, sr, kept=[(0, 1)], record=word_frame)


def test_spectrogram_figure(word_frame):
    rng = np.random.default_rng(5)
    spec = rng.normal(size=(40, 300))
    times = np.arange(300) * 0.01
    fig = viz.spectrogram_figure(spec, times, WORDS, record=word_frame, head=1)
    heat = heatmap_trace(fig)
    assert np.asarray(heat.z).shape == (40, 300)
    assert np.allclose(_band_spans(fig, viz.KEPT_COLOR), viz.kept_intervals(word_frame, 1))
    strip = next(t for t in fig.data if getattr(t, "fillcolor", None) == viz.KEPT_COLOR)
    assert min(v for v in strip.y if v is not None) >= 39  # above the mel bins
    assert _band_spans(fig, "black"), "dropped frames are dimmed"
    assert set(next(t for t in fig.data if t.name == "words").text) == {w.text for w in WORDS}
    with pytest.raises(InputError):
        viz.spectrogram_figure(spec, times[:-1])


# --------------------------------------------------------------------------- other views


def test_word_importance_html():
    scores = np.array([0.1, 0.9, 0.2, 1.8, 0.05, 0.3, 0.2, 0.1])
    keep = scores >= 0.3
    out = viz.word_importance_html(WORDS, scores, keep)
    assert out.count('class="ser-word"') == len(WORDS)
    happy = out.split("happy</span>")[0].rsplit("<span", 1)[1]
    assert "font-weight: 700" in happy and "rgba(0,114,178,0.80)" in happy
    i_span = out.split(">i</span>")[0].rsplit("<span", 1)[1]
    assert "font-weight" not in i_span
    assert "&lt;b&gt;" in viz.word_importance_html(["<b>"], np.array([1.0]))  # escaped
    with pytest.raises(InputError):
        viz.word_importance_html(WORDS, scores[:3], None)


def test_probabilities_figure_highlights_prediction():
    labels = ["ang", "hap", "neu", "sad"]
    fig = viz.probabilities_figure(labels, np.array([0.1, 0.2, 0.6, 0.1]), true_label="sad")
    bar = fig.data[0]
    assert bar.orientation == "h"
    assert list(bar.marker.color) == [viz.class_color(x) for x in labels]
    assert list(bar.marker.opacity).index(1.0) == 2
    assert "<b>neutral</b>" in fig.layout.yaxis.ticktext[2] and "true" in fig.layout.yaxis.ticktext[3]
    assert viz.class_color("ang") != viz.class_color("sad")
    assert viz.class_color("zzz") == viz.class_color("zzz")
    with pytest.raises(InputError):
        viz.probabilities_figure(labels, np.array([0.5, 0.5]))


def test_probabilities_html_bars_say_the_same_as_the_figure():
    import re

    labels = ["ang", "hap", "neu", "sad"]
    text = viz.probabilities_html(labels, np.array([0.1, 0.2, 0.6, 0.1]), true_label="sad")
    rows = re.findall(r"<div class='ser-prob'.*?</div>", text)
    assert len(rows) == 4
    assert [re.search(r"title='(\w+):", r).group(1) for r in rows] == ["angry", "happy", "neutral", "sad"]
    assert "width: 60.0%" in rows[2] and "border: 2px solid black" in rows[2] and "font-weight: 700" in rows[2]
    assert all("border:" not in r and "opacity: 0.45" in r for i, r in enumerate(rows) if i != 2)
    assert viz.class_color("neu") in rows[2] and "60.0%" in rows[2] and "✓ true" in rows[3]
    assert "<script" not in viz.probabilities_html(["<script>"], np.array([1.0]))  # labels are escaped
    with pytest.raises(InputError):
        viz.probabilities_html(labels, np.array([0.5, 0.5]))


def test_probability_curve_figure():
    ratios = [1.0, 0.1, 0.5]
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    fig = viz.probability_curve_figure(ratios, probs, ["ang", "sad"])
    assert [t.name for t in fig.data] == ["angry", "sad"]  # emotion words, not codes
    assert list(fig.data[0].x) == [0.1, 0.5, 1.0] and list(fig.data[0].y) == [0.2, 0.5, 0.7]
    assert fig.data[1].line.color == viz.CLASS_COLORS["sad"]
    with pytest.raises(InputError):
        viz.probability_curve_figure(ratios, probs[:2], ["ang", "sad"])


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix_figure(normalize):
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    fig = viz.confusion_matrix_figure(cm, ["ang", "hap", "sad"], normalize=normalize)
    z = np.asarray(fig.data[0].z, dtype=float)
    text = np.asarray(fig.data[0].text)
    if normalize:
        assert z[0].sum() == pytest.approx(100) and z[1].sum() == 0
        assert text[2, 2].startswith("50%")
    else:
        assert np.array_equal(z, cm) and text[0, 0] == "3"
    assert list(fig.layout.xaxis.ticktext) == ["ang", "hap", "sad"]
    assert fig.layout.yaxis.title.text == "true"


def test_nucleus_overlay_and_bar_figure():
    img = np.random.default_rng(6).random((32, 24))
    mask = np.zeros((4, 3), bool)
    mask[1, 2] = True
    mask[3, 0] = True
    weights = np.full((4, 3), 0.08)
    weights[1, 2], weights[3, 0] = 0.12, 0.04  # the tint: weight ÷ the kept points' mean weight
    fig = viz.nucleus_overlay_figure(img, mask, weights=weights)
    overlay = fig.data[1]
    z = np.asarray(overlay.z, dtype=float)
    assert np.isfinite(z).sum() == 2 and z[1, 2] == pytest.approx(1.5) and z[3, 0] == pytest.approx(0.5)
    assert np.asarray(overlay.x)[2] == pytest.approx(2.5 * 24 / 3 - 0.5)
    # a spectrogram chunk fills its figure; a face keeps its proportions
    assert fig.layout.yaxis.scaleanchor is None and fig.layout.yaxis.showticklabels is False
    face = viz.nucleus_overlay_figure(np.zeros((32, 24, 3), np.uint8), mask, weights=weights)
    assert face.layout.yaxis.scaleanchor == "x"
    # kept face cells are outlined: two lone cells = 8 sides; a 2×2 block = its 8 outer sides only
    outline = face.data[-1]
    assert outline.mode == "lines" and list(outline.x).count(None) == 8 and "outlined" in face.layout.title.text
    block = np.zeros((4, 3), bool)
    block[1:3, 0:2] = True
    sides = viz.nucleus_overlay_figure(np.zeros((32, 24, 3), np.uint8), block).data[-1]
    xs, ys = np.array(sides.x, dtype=float), np.array(sides.y, dtype=float)
    assert list(sides.x).count(None) == 8
    assert np.nanmin(xs) == pytest.approx(-0.5) and np.nanmax(xs) == pytest.approx(2 * 8 - 0.5)
    assert np.nanmin(ys) == pytest.approx(8 - 0.5) and np.nanmax(ys) == pytest.approx(3 * 8 - 0.5)
    with pytest.raises(InputError):
        viz.nucleus_overlay_figure(img, np.ones((64, 3), bool))
    bars = viz.bar_figure(["L1", "L2", "L3"], [0.2, 0.5, 0.3], "α", highlight=1)
    assert bars.data[0].marker.color[1] == viz.ACCENT_COLOR
    assert list(bars.data[0].y) == [0.2, 0.5, 0.3]


# --------------------------------------------------------------------------- exports


def test_record_to_csv_long_format(word_frame):
    text = viz.record_to_csv(word_frame, head=0)
    table = pd.read_csv(io.StringIO(text))
    assert list(table.columns) == ["query", "key", "query_time", "key_time", "weight", "kept"]
    assert len(table) == 8 * 150
    row = table.iloc[3 * 150 + 20]
    assert row["query"] == "happy" and row["key_time"] == pytest.approx(20 * FRAME)
    assert row["query_time"] == pytest.approx(WORDS[3].start)
    assert row["weight"] == pytest.approx(word_frame.weights[0, 3, 20], rel=1e-5)
    assert bool(row["kept"]) == bool(word_frame.keep[0, 20])
    assert table["kept"].sum() == 8 * word_frame.keep[0].sum()


def test_trace_to_json_round_trip(word_frame, word_word):
    trace = AttentionTrace("ks_transformer", [word_frame, word_word],
                           extras={"alpha": np.array([0.2, 0.8])})
    data = json.loads(viz.trace_to_json(trace))
    assert [r["name"] for r in data["records"]] == ["ccab1.cross", "text.self"]
    assert np.allclose(data["records"][0]["weights"], word_frame.weights, atol=1e-6)
    assert data["records"][0]["keep"] == word_frame.keep.tolist()
    assert data["extras"]["alpha"] == [0.2, 0.8]
    assert "weights" not in json.loads(viz.trace_to_json(trace, with_weights=False))["records"][0]


def test_png_export_decodes_with_expected_size(word_frame, word_word):
    figs = [viz.attention_heatmap(word_frame, 0), viz.key_importance_figure(word_word, 0),
            viz.confusion_matrix_figure(np.eye(3) * 4, ["a", "b", "c"], True)]
    sizes = [png_size(viz.figure_to_png(f, width=640, height=360)) for f in figs]
    assert sizes == [(640, 360)] * 3
    assert png_size(viz.figure_to_png(figs[0], width=300, height=200, scale=2)) == (600, 400)
    probs = viz.probabilities_figure(["ang", "hap"], np.array([0.3, 0.7]))
    assert png_size(viz.figure_to_png(probs)) == (900, probs.layout.height)
    with pytest.raises(InputError):
        viz.figure_to_png("not a figure")


def test_png_pixels_show_the_data():
    """A map whose right half is zero renders darker on the right (viridis low = dark)."""
    w = np.zeros((1, 4, 4))
    w[0, :, :2] = 1.0
    rec = AttentionRecord("t", "self", "text", "text", w,
                          AxisLabels("words", list("abcd")), AxisLabels("words", list("efgh")))
    data = viz.figure_to_png(viz.attention_heatmap(rec, 0), width=400, height=400)
    with Image.open(io.BytesIO(data)) as im:
        px = np.asarray(im.convert("L"), dtype=float)
    middle = px[150:250]
    left, right = middle[:, 100:170].mean(), middle[:, 200:260].mean()
    assert left > right + 50


# --------------------------------------------------------------------------- the lead's first tests
# (kept as written against the first viz.py; frames here start half a frame early, weights
# are float32, and words are plain strings)

LEAD_WORDS = ["I", "am", "really", "furious", "today"]


def _lead_words() -> AxisLabels:
    start = np.arange(5, dtype=np.float32) * 0.3
    return AxisLabels("words", LEAD_WORDS, start, start + 0.25)


def _lead_frames(n: int) -> AxisLabels:
    t = np.arange(n, dtype=np.float32) * 0.02
    return AxisLabels("frames", [f"{x:.2f} s" for x in t], t - 0.01, t + 0.01)


def _lead_record(q: AxisLabels, k: AxisLabels, heads: int = 2, keep_ratio: float = 0.4, seed: int = 0):
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
    rec = _lead_record(_lead_words(), _lead_words())
    fig = viz.attention_heatmap(rec, head=0)
    heat = [t for t in fig.data if t.type == "heatmap"][0]
    assert np.asarray(heat.z).shape == (5, 5)
    text = json.dumps(fig.to_plotly_json(), default=str)
    assert "furious" in text
    assert "keep_ratio 0.40" in fig.layout.title.text


def test_frame_axis_is_time_and_large_maps_are_pooled_keeping_max():
    rec = _lead_record(_lead_frames(1000), _lead_frames(1000), heads=1, keep_ratio=1.0)
    fig = viz.attention_heatmap(rec, head=0, max_cells=100)
    heat = [t for t in fig.data if t.type == "heatmap"][0]
    z = np.asarray(heat.z, dtype=float)
    assert z.shape[0] <= 100 and z.shape[1] <= 100
    assert z.max() == pytest.approx(float(rec.weights[0].max()), rel=1e-5)
    assert "max-pooled" in fig.layout.title.text
    assert "s" in (fig.layout.xaxis.title.text or "")


def test_key_importance_threshold_is_the_nth_largest_score():
    rec = _lead_record(_lead_frames(3), _lead_words(), heads=2, keep_ratio=0.4)
    fig = viz.key_importance_figure(rec, head=1)
    threshold, n = viz.top_k_threshold(rec.key_scores[1], 0.4)
    assert n == 2 and threshold == pytest.approx(np.sort(rec.key_scores[1])[-2])
    shapes_and_lines = json.dumps(fig.to_plotly_json(), default=str)
    assert f"{threshold:.3f}"[:4] in shapes_and_lines
    kept_traces = [t for t in fig.data if t.type == "bar"]
    assert len(kept_traces) >= 2  # kept and dropped keys in their own colours


def test_waveform_and_spectrogram_place_words_and_kept_lead_frames():
    audio = np.sin(np.linspace(0, 600, 16000)).astype(np.float32) * 0.3
    spoken = [Word(w, 0.2 * i, 0.2 * i + 0.15) for i, w in enumerate(LEAD_WORDS)]
    rec = _lead_record(_lead_words(), _lead_frames(50), heads=2, keep_ratio=0.2)
    wf = viz.waveform_figure(audio, 16000, spoken, record=rec)
    text = json.dumps(wf.to_plotly_json(), default=str)
    assert "furious" in text and "kept" in text
    spec = viz.spectrogram_figure(np.random.rand(40, 100), np.arange(100) * 0.01, spoken, record=rec)
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


def test_word_importance_html_marks_kept_lead_words():
    html = viz.word_importance_html(LEAD_WORDS, np.array([0.1, 0.2, 0.3, 2.0, 0.1]), np.array([0, 0, 0, 1, 0], bool))
    assert html.count("furious") == 1 and "<" in html
    with pytest.raises(Exception):
        viz.word_importance_html(LEAD_WORDS, np.ones(3))


def test_exports_csv_json_png():
    rec = _lead_record(_lead_words(), _lead_frames(4), heads=2)
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


def test_a_compact_heatmap_keeps_only_the_short_notes_for_a_narrow_column():
    """Compare k's 3-4 columns: no layer name (the page says it once), no legend, the short notes."""
    record = _lead_record(_lead_frames(20), _lead_words(), heads=2)
    full = viz.attention_heatmap(record, "mean")
    small = viz.attention_heatmap(record, "mean", zmax=1.0, compact=True)
    assert record.name in full.layout.title.text and record.name not in small.layout.title.text
    assert "keep_ratio" in small.layout.title.text and "hatched" not in small.layout.title.text
    assert small.layout.showlegend is False and small.data[0].zmax == 1.0


def test_repeated_words_stay_apart_on_a_categorical_axis_and_in_the_png():
    words = AxisLabels("words", ["no", "no", "no"])  # no times: the labels alone would collide
    w = np.full((1, 3, 3), 1 / 3, np.float32)
    rec = AttentionRecord("t.self", "self", "text", "text", w, words, words)
    fig = viz.attention_heatmap(rec, head=0)
    heat = heatmap_trace(fig)
    assert list(heat.x) == ["no", "no #2", "no #3"] and list(fig.layout.xaxis.ticktext) == ["no"] * 3
    png = viz.figure_to_png(fig, width=300, height=300)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_word_labels_on_the_waveform_never_overlap_and_use_a_second_row_when_needed():
    from ser_core.viz.audio import CHAR_SHARE

    def placed(fig, span):
        marks = next(t for t in fig.data if t.name == "words")
        rows: dict[float, list[tuple[float, float]]] = {}
        for x, y, text in zip(marks.x, marks.y, marks.text):
            if text:
                half = (len(text) + 1) * CHAR_SHARE * span / 2
                rows.setdefault(y, []).append((x - half, x + half))
        for spans in rows.values():  # in each row, every label clears the one before it
            assert all(a[1] <= b[0] + 1e-9 for a, b in zip(spans, spans[1:]))
        return marks, rows

    few = [Word("hello", 0.5, 0.9), Word("there", 1.5, 1.9)]
    marks, rows = placed(viz.waveform_figure(np.zeros(3 * 16000), 16000, few), 3.0)
    assert list(marks.text) == ["hello", "there"] and len(rows) == 1  # room for all: one row
    dense = [Word(f"word{i}", 0.2 * i, 0.2 * i + 0.15) for i in range(20)]
    fig = viz.waveform_figure(np.sin(np.linspace(0, 300, 4 * 16000)), 16000, dense)
    marks, rows = placed(fig, 4.0)
    assert len(rows) == 2 and all(marks.text)  # neighbours alternate, every word labelled
    long_clip = [Word(f"w{i}", 0.29 * i, 0.29 * i + 0.2) for i in range(205)]  # 60 s, 205 words
    marks, rows = placed(viz.waveform_figure(np.zeros(60 * 16000), 16000, long_clip), 60.0)
    labelled = sum(bool(t) for t in marks.text)
    assert 20 < labelled < 205 and len(marks.hovertext) == 205  # thinned, every word still hovers
    assert viz.figure_to_png(fig, width=500, height=300)[:4] == b"\x89PNG"


def test_a_pooled_record_is_drawn_and_exported_like_its_full_map(word_frame):
    """A long clip keeps its maps max-pooled (AttentionRecord.pool): the heatmap, the keep
    hatching, the key bars and the CSV read it with the full labels."""
    import dataclasses

    import torch

    from ser_core.attention import pool_blocks, pool_map

    block = pool_blocks(8, 150, 40)
    assert block == (1, 4)
    pooled = dataclasses.replace(word_frame, weights=pool_map(torch.from_numpy(word_frame.weights), block).numpy(),
                                 pool=block)
    assert pooled.pooled and pooled.weights.shape == (2, 8, 38)
    np.testing.assert_allclose(pooled.weights[1, 2, 37], word_frame.weights[1, 2, 148:150].max())  # partial edge block
    a, b = viz.attention_heatmap(pooled, 0, max_cells=40), viz.attention_heatmap(word_frame, 0, max_cells=40)
    np.testing.assert_allclose(np.asarray(heatmap_trace(a).z), np.asarray(heatmap_trace(b).z))
    assert list(heatmap_trace(a).x) == list(heatmap_trace(b).x) and a.layout.title.text == b.layout.title.text
    assert [list(t.x) for t in a.data[1:]] == [list(t.x) for t in b.data[1:]]  # dropped keys hatched alike
    keys_a, keys_b = viz.key_importance_figure(pooled, 0), viz.key_importance_figure(word_frame, 0)
    assert [list(t.y) for t in keys_a.data] == [list(t.y) for t in keys_b.data]  # key scores stay whole
    table = pd.read_csv(io.StringIO(viz.record_to_csv(pooled, head=0)))
    assert len(table) == 8 * 38
    row = table.iloc[3 * 38 + 5]  # the word "happy" × frames 20–23
    assert row["query"] == "happy" and row["key"] == "0.40 s…0.46 s" and row["key_time"] == pytest.approx(0.4)
    assert row["weight"] == pytest.approx(word_frame.weights[0, 3, 20:24].max(), rel=1e-5)
    assert bool(row["kept"]) == bool(word_frame.keep[0, 20:24].any())
    assert json.loads(viz.trace_to_json(AttentionTrace("m", [pooled])))["records"][0]["pool"] == [1, 4]
    wrong = dataclasses.replace(pooled, pool=(1, 3))
    with pytest.raises(InputError, match="pooled over 1×3 blocks"):
        viz.attention_heatmap(wrong, 0)


def test_kept_strip_places_spans_on_the_waveform_time_axis():
    html = viz.kept_strip_html([(0.5, 1.0), (1.5, 2.5), (3.5, 9.0)], 4.0, "ccab_a2t.0.cross")
    boxes = re.findall(r"left:([\d.]+)%; width:([\d.]+)%", html)
    # a span past the clip's end is cut at it; positions are shares of the clip
    assert [(float(a), float(b)) for a, b in boxes] == [(12.5, 12.5), (37.5, 25.0), (87.5, 12.5)]
    assert "2.00 s of 4.00 s" in html and "ccab_a2t.0.cross" in html
    # the strip sits over the figure's plot area: the waveform's own margins, which do not grow
    fig = viz.waveform_figure(np.zeros(4 * 16000), 16000)
    margin = viz.audio.WAVEFORM_MARGIN
    assert fig.layout.margin.l == margin["l"] and fig.layout.margin.r == margin["r"]
    assert fig.layout.yaxis.automargin is False
    assert f"margin: 0 {margin['r']}px 0 {margin['l']}px" in html
    assert "0.00 s of 4.00 s" in viz.kept_strip_html([], 4.0)
    with pytest.raises(InputError):
        viz.kept_strip_html([(0, 1)], 0.0)


def test_spectrogram_time_axis_ends_where_the_clip_does():
    spec, times = np.random.rand(40, 100), np.arange(100) * 0.01 + 0.005
    assert viz.spectrogram_figure(spec, times).layout.xaxis.range[1] == pytest.approx(1.005)
    assert viz.spectrogram_figure(spec, times, duration=0.998).layout.xaxis.range[1] == 0.998


def test_point_attribution_figure_outlines_the_kept_cells_and_says_their_share():
    scores = np.array([[0.5, -0.2], [0.0, 0.1]])
    keep = np.array([[True, False], [False, False]])
    fig = viz.point_attribution_figure(scores, keep, "visual.attention0", face=True, share=(0.625, 0.25))
    assert "the kept 25% of the points" in fig.layout.title.text
    assert "holding 62% of the attribution" in fig.layout.title.text
    heat, outline = fig.data
    assert heat.zmin == -0.5 and heat.zmax == 0.5  # red and blue on one scale, 0 in the middle
    assert len([x for x in outline.x if x is None]) == 4  # the one kept cell's four sides
    with pytest.raises(InputError):
        viz.point_attribution_figure(scores, keep[:1], "x")
