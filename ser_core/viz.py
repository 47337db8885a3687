"""Views: pure functions from an :class:`~ser_core.trace.AttentionTrace` to figures, tables, exports.

Every function here reads only the trace records (plus the waveform / spectrogram arrays and
the word list a page passes in), never model internals, so one set of views serves all four
papers. Figures are interactive plotly figures for ``st.plotly_chart``.

Axes
    An axis indexed by words (or anything without times) is categorical: positions 0..n-1
    with the words as tick labels (repeated words stay separate). An axis indexed by frames,
    chunks or segments with ``start``/``end`` times is a TIME axis in seconds (cell centres).

Large maps
    A map with more than :data:`MAX_CELLS_PER_AXIS` positions on an axis is max-pooled over
    blocks (the title says so), so a 1500×1500 frame map stays responsive in the browser;
    max-pooling keeps every peak visible.

PNG export
    :func:`figure_to_png` draws the plotly figure's own data (heatmaps, bars, lines, images,
    shapes, annotations) with matplotlib's Agg backend. Kaleido 1.5.0 with Debian's chromium
    does work offline, but a one-shot ``fig.to_image`` took 3.1–4.3 s per call on this machine
    (0.4–0.7 s only with a persistent browser process kept alive), so PNGs are rendered with
    matplotlib instead: no browser, no extra package, ~0.1–0.5 s.

Colours
    Okabe–Ito colour-blind-safe palette; each emotion class keeps its colour in every figure
    (:data:`CLASS_COLORS`: ang vermillion-red, hap orange-gold, neu grey, sad blue, ...).
    Kept keys are bluish green, dropped keys grey and hatched.
"""

from __future__ import annotations

import html
import io
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ser_core.asr import Word
from ser_core.errors import InputError
from ser_core.trace import AttentionRecord, AttentionTrace, AxisLabels

Head = int | Literal["mean"]

# --------------------------------------------------------------------------- palette

#: Fixed per-class colours (Okabe & Ito 2008, colour-blind safe), the same in every figure.
CLASS_COLORS: dict[str, str] = {
    "ang": "#D55E00",  # vermillion (red)
    "hap": "#E69F00",  # orange / gold
    "neu": "#999999",  # grey
    "sad": "#0072B2",  # blue
    "exc": "#F0E442",  # yellow
    "fru": "#CC79A7",  # reddish purple
    "fea": "#009E73",  # bluish green
    "dis": "#56B4E9",  # sky blue
    "sur": "#000000",  # black
    "cal": "#8C6BB1",  # lavender
}
#: Colours for labels outside CLASS_COLORS (Paul Tol "muted"), chosen by a stable hash.
EXTRA_COLORS: tuple[str, ...] = (
    "#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255",
    "#AA4499",
)
KEPT_COLOR = "#009E73"
DROPPED_COLOR = "#BBBBBB"
ACCENT_COLOR = "#D55E00"
ATTENTION_COLORSCALE = "Viridis"
SPECTROGRAM_COLORSCALE = "Magma"

#: Above this many positions on an axis, attention maps are max-pooled over blocks.
MAX_CELLS_PER_AXIS = 400
#: Spectrograms wider than this many frames are mean-pooled over time blocks.
MAX_SPECTROGRAM_FRAMES = 2000
#: Waveforms longer than this many samples are drawn as a min/max envelope.
MAX_WAVEFORM_POINTS = 4000


def class_color(label: str) -> str:
    """The fixed colour of an emotion class (a stable colour for unknown labels too)."""
    if label in CLASS_COLORS:
        return CLASS_COLORS[label]
    return EXTRA_COLORS[zlib.crc32(str(label).encode()) % len(EXTRA_COLORS)]


# --------------------------------------------------------------------------- record helpers


def _check_record(record: AttentionRecord) -> np.ndarray:
    if not isinstance(record, AttentionRecord):
        raise InputError("Expected an attention record from a model's trace.")
    weights = np.asarray(record.weights, dtype=np.float64)
    if weights.ndim != 3 or 0 in weights.shape:
        raise InputError(
            f"Attention record {record.name!r} has weights of shape {weights.shape}; "
            "expected [heads, queries, keys]."
        )
    if len(record.query_labels) != weights.shape[1] or len(record.key_labels) != weights.shape[2]:
        raise InputError(
            f"Attention record {record.name!r}: {len(record.query_labels)} query labels and "
            f"{len(record.key_labels)} key labels do not match its map {weights.shape[1:]}."
        )
    return weights


def _head_index(record: AttentionRecord, head: Head) -> int | None:
    """Return the head index, or None for the mean over heads."""
    if isinstance(head, str):
        if head != "mean":
            raise InputError(f"Head must be a number or 'mean', not {head!r}.")
        return None
    if isinstance(head, bool) or not isinstance(head, (int, np.integer)):
        raise InputError(f"Head must be a number or 'mean', not {head!r}.")
    if not 0 <= int(head) < record.heads:
        raise InputError(
            f"Head {head} does not exist in {record.name!r}: it has {record.heads} head(s), "
            f"numbered 0 to {record.heads - 1}."
        )
    return int(head)


def _head_label(h: int | None, heads: int) -> str:
    return f"mean of {heads} heads" if h is None else f"head {h}"


def head_weights(record: AttentionRecord, head: Head) -> np.ndarray:
    """The [Tq, Tk] map of one head, or the mean over heads."""
    weights = _check_record(record)
    h = _head_index(record, head)
    return weights.mean(axis=0) if h is None else weights[h]


@dataclass
class KeepMask:
    """A record's keep mask brought to one head: over key columns or over map cells."""

    over: Literal["columns", "cells"]
    mask: np.ndarray  # bool [Tk] or [Tq, Tk]


def head_keep(record: AttentionRecord, head: Head) -> KeepMask | None:
    """The keep mask of one head (for 'mean': kept by at least one head); None if none fits.

    Key-sparse records keep ``[heads, Tk]`` (columns); nucleus records keep points of the map
    they mask (``[heads, Tq, Tk]`` or ``[Tq, Tk]``, cells).
    """
    weights = _check_record(record)
    if record.keep is None:
        return None
    keep = np.asarray(record.keep, dtype=bool)
    n_heads, tq, tk = weights.shape
    h = _head_index(record, head)

    def pick(per_head: np.ndarray) -> np.ndarray:
        return per_head.any(axis=0) if h is None else per_head[h]

    if keep.shape == (n_heads, tk):
        return KeepMask("columns", pick(keep))
    if keep.shape == (tk,):
        return KeepMask("columns", keep)
    if keep.shape == (n_heads, tq, tk):
        return KeepMask("cells", pick(keep))
    if keep.shape == (tq, tk):
        return KeepMask("cells", keep)
    return None


def head_key_scores(record: AttentionRecord, head: Head) -> tuple[np.ndarray, np.ndarray | None]:
    """Key scores [Tk] of one head (or their mean) and the kept-key mask [Tk] (or None).

    The key score of key z is Σ_q W[q, z] (KS-Transformer, the column sum that ranks keys).
    Records without stored scores fall back to column sums of their weights.
    """
    weights = _check_record(record)
    h = _head_index(record, head)
    if record.key_scores is not None:
        scores = np.asarray(record.key_scores, dtype=np.float64)
        if scores.ndim == 1:
            scores = scores[None, :]
        if scores.shape[-1] != weights.shape[2]:
            raise InputError(
                f"Record {record.name!r} has {scores.shape[-1]} key scores for "
                f"{weights.shape[2]} keys."
            )
    else:
        scores = weights.sum(axis=1)
    if scores.shape[0] == 1:
        chosen = scores[0]
    else:
        chosen = scores.mean(axis=0) if h is None else scores[h]
    keep = head_keep(record, head)
    kept = None
    if keep is not None:
        kept = keep.mask if keep.over == "columns" else keep.mask.any(axis=0)
    return chosen, kept


def top_k_threshold(scores: np.ndarray, keep_ratio: float) -> tuple[float, int]:
    """The n-th largest score with n = max(1, ⌊keep_ratio·L⌋) (key-sparse top-k), and n."""
    scores = np.asarray(scores, dtype=np.float64)
    length = scores.shape[0]
    n = length if keep_ratio >= 1 else max(1, math.floor(keep_ratio * length + 1e-9))
    n = min(n, length)
    return float(np.sort(scores)[::-1][n - 1]), n


# --------------------------------------------------------------------------- axes


@dataclass
class _Axis:
    """Positions and labels of one map axis, ready for plotly."""

    positions: np.ndarray  # centres (seconds on a time axis, indices otherwise)
    widths: np.ndarray  # cell widths in the same unit
    hover: np.ndarray  # str per position: label and time
    title: str
    is_time: bool
    names: list[str]

    @property
    def lo(self) -> float:
        return float(self.positions[0] - self.widths[0] / 2)

    @property
    def hi(self) -> float:
        return float(self.positions[-1] + self.widths[-1] / 2)


def _fmt_time(t: float) -> str:
    return f"{t:.2f} s"


def _times(labels: AxisLabels) -> tuple[np.ndarray, np.ndarray] | None:
    """Start/end seconds of each position, or None when the axis has no times."""
    if labels.start is None:
        return None
    start = np.asarray(labels.start, dtype=np.float64).reshape(-1)
    if start.shape[0] != len(labels):
        return None
    if labels.end is not None and np.asarray(labels.end).reshape(-1).shape[0] == len(labels):
        end = np.asarray(labels.end, dtype=np.float64).reshape(-1)
    else:
        step = np.diff(start)
        last = step[-1] if step.size else 0.02
        end = start + np.append(step, last)
    return start, end


def _axis(labels: AxisLabels, role: str, block: int = 1) -> _Axis:
    """Build an axis; ``block`` > 1 pools consecutive positions (for downsampled maps)."""
    n = len(labels)
    times = _times(labels)
    groups = [range(i, min(i + block, n)) for i in range(0, n, block)]
    names = [str(x) for x in labels.names]
    if block == 1:
        group_names = names
    else:
        group_names = [
            names[g[0]] if len(g) == 1 else f"{names[g[0]]}…{names[g[-1]]}" for g in groups
        ]
    if times is not None:
        start, end = times
        g_start = np.array([start[g[0]] for g in groups])
        g_end = np.array([end[g[-1]] for g in groups])
        span = [f"{_fmt_time(s)}–{_fmt_time(e)}" for s, e in zip(g_start, g_end)]
    if times is not None and labels.kind != "words":
        return _Axis(
            positions=(g_start + g_end) / 2,
            widths=np.maximum(g_end - g_start, 1e-6),
            hover=np.array(span if block > 1 else [_fmt_time(s) for s in g_start]),
            title=f"{role} time (s)",
            is_time=True,
            names=group_names,
        )
    hover = group_names if times is None else [f"{w} ({s})" for w, s in zip(group_names, span)]
    return _Axis(
        positions=np.arange(len(groups), dtype=np.float64),
        widths=np.ones(len(groups)),
        hover=np.array(hover, dtype=object).astype(str),
        title=f"{role} {labels.kind}",
        is_time=False,
        names=group_names,
    )


def _axis_layout(axis: _Axis, reversed_: bool = False) -> dict:
    out: dict = {"title": {"text": axis.title}}
    if axis.is_time:
        out["range"] = [axis.hi, axis.lo] if reversed_ else [axis.lo, axis.hi]
    else:
        n = len(axis.names)
        stride = max(1, math.ceil(n / 60))
        idx = list(range(0, n, stride))
        out.update(
            tickmode="array",
            tickvals=[float(axis.positions[i]) for i in idx],
            ticktext=[axis.names[i] for i in idx],
            range=[axis.hi, axis.lo] if reversed_ else [axis.lo, axis.hi],
        )
        if n > 8:
            out["tickangle"] = -45
    return out


def max_pool_2d(z: np.ndarray, block_q: int, block_k: int) -> np.ndarray:
    """Max over non-overlapping block_q×block_k blocks (partial edge blocks included)."""
    tq, tk = z.shape
    nq, nk = math.ceil(tq / block_q), math.ceil(tk / block_k)
    padded = np.full((nq * block_q, nk * block_k), -np.inf, dtype=np.float64)
    padded[:tq, :tk] = z
    return padded.reshape(nq, block_q, nk, block_k).max(axis=(1, 3))


def _any_pool_1d(mask: np.ndarray, block: int) -> np.ndarray:
    n = mask.shape[0]
    padded = np.zeros(math.ceil(n / block) * block, dtype=bool)
    padded[:n] = mask
    return padded.reshape(-1, block).any(axis=1)


# --------------------------------------------------------------------------- attention maps


def attention_heatmap(
    record: AttentionRecord, head: Head = "mean", max_cells: int = MAX_CELLS_PER_AXIS
) -> go.Figure:
    """Heatmap of one attention map: queries down, keys across; dropped keys hatched grey.

    Word axes are categorical (words as ticks), frame axes are time in seconds. Above
    ``max_cells`` positions on an axis the map is max-pooled over blocks (said in the title).
    """
    z = head_weights(record, head)
    h = _head_index(record, head)
    if max_cells < 2:
        raise InputError("The heatmap size cap must be at least 2 cells per axis.")
    tq, tk = z.shape
    bq, bk = math.ceil(tq / max_cells), math.ceil(tk / max_cells)
    keep = head_keep(record, head)
    if bq > 1 or bk > 1:
        z = max_pool_2d(z, bq, bk)
    qa = _axis(record.query_labels, "query", bq)
    ka = _axis(record.key_labels, "key", bk)

    title = f"{record.name} ({record.kind}): {_head_label(h, record.heads)}"
    notes = []
    if bq > 1 or bk > 1:
        notes.append(f"max-pooled over {bq}×{bk} blocks ({tq}×{tk} → {z.shape[0]}×{z.shape[1]})")
    if record.keep_ratio is not None:
        notes.append(f"keep_ratio {record.keep_ratio:.2f}")
    if record.top_p is not None:
        notes.append(f"top_p {record.top_p:.2f}")

    heat = go.Heatmap(
        z=z,
        x=ka.positions,
        y=qa.positions,
        colorscale=ATTENTION_COLORSCALE,
        zmin=0.0,
        zmax=float(z.max()) if z.max() > 0 else 1.0,
        colorbar={"title": {"text": "max weight" if (bq > 1 or bk > 1) else "weight"}},
        name="attention",
    )
    weight_fmt = "%{z:.4f}"
    if qa.is_time and ka.is_time:
        q_span = "%{y:.3f} s" if bq == 1 else "≈%{y:.3f} s"
        k_span = "%{x:.3f} s" if bk == 1 else "≈%{x:.3f} s"
        heat.hovertemplate = f"query {q_span}<br>key {k_span}<br>weight {weight_fmt}<extra></extra>"
    else:
        text = np.char.add(
            np.char.add(np.char.add("query: ", qa.hover.astype(str))[:, None], "<br>key: "),
            ka.hover.astype(str)[None, :],
        )
        heat.text = text
        heat.hovertemplate = f"%{{text}}<br>weight {weight_fmt}<extra></extra>"
    fig = go.Figure(heat)

    if keep is not None and keep.over == "columns":
        dropped = ~(_any_pool_1d(keep.mask, bk) if bk > 1 else keep.mask)
        if dropped.any():
            fig.add_trace(
                go.Bar(
                    x=ka.positions[dropped],
                    y=np.full(int(dropped.sum()), qa.hi - qa.lo),
                    base=qa.lo,
                    width=ka.widths[dropped],
                    marker={
                        "color": "rgba(187,187,187,0.55)",
                        "pattern": {"shape": "/", "fgcolor": "white", "size": 6},
                        "line": {"width": 0},
                    },
                    name="dropped key (weights set to 0)",
                    hoverinfo="skip",
                    showlegend=True,
                )
            )
        notes.append(f"{int(keep.mask.sum())} of {tk} keys kept")
        if h is None and record.heads > 1:
            notes.append("hatched = dropped by every head")
    elif keep is not None:  # nucleus: kept points of the map
        cells = keep.mask.astype(np.float64)
        if bq > 1 or bk > 1:
            cells = max_pool_2d(cells, bq, bk)
        overlay = np.where(cells > 0, np.nan, 1.0)
        if np.isfinite(overlay).any():
            fig.add_trace(
                go.Heatmap(
                    z=overlay,
                    x=ka.positions,
                    y=qa.positions,
                    colorscale=[[0, DROPPED_COLOR], [1, DROPPED_COLOR]],
                    showscale=False,
                    opacity=0.8,
                    hoverinfo="skip",
                    name="dropped point",
                )
            )
        notes.append(f"grey = dropped points ({int(keep.mask.sum())} of {keep.mask.size} kept)")
    elif record.keep is not None:
        notes.append(f"keep mask of shape {np.shape(record.keep)} does not index this map")

    if notes:
        title += "<br><sup>" + " · ".join(notes) + "</sup>"
    fig.update_layout(
        title={"text": title},
        xaxis=_axis_layout(ka),
        yaxis=_axis_layout(qa, reversed_=True),
        barmode="overlay",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 1, "xanchor": "right"},
        height=max(420, min(800, 24 * len(qa.names) + 200)) if not qa.is_time else 600,
        margin={"t": 110},
    )
    return fig


def key_importance_figure(record: AttentionRecord, head: Head = 0) -> go.Figure:
    """Bars of key scores over keys, kept vs dropped in two colours, top-k threshold as a line."""
    scores, kept = head_key_scores(record, head)
    h = _head_index(record, head)
    axis = _axis(record.key_labels, "key")
    length = scores.shape[0]

    threshold: float | None = None
    if kept is not None and kept.any() and (h is not None or record.heads == 1):
        # Key-sparse keeps every key whose score ≥ the n-th largest, so the lowest kept
        # score is the top-k threshold (ties included).
        threshold = float(scores[kept].min())
    elif kept is None and record.keep_ratio is not None and record.keep_ratio < 1:
        threshold, _ = top_k_threshold(scores, record.keep_ratio)
        kept = scores >= threshold

    fig = go.Figure()
    groups = [("kept", kept, KEPT_COLOR), ("dropped", ~kept, DROPPED_COLOR)] if kept is not None \
        else [("key", np.ones(length, bool), KEPT_COLOR)]
    for name, sel, color in groups:
        if not sel.any():
            continue
        fig.add_trace(
            go.Bar(
                x=axis.positions[sel],
                y=scores[sel],
                width=axis.widths[sel] * (1.0 if axis.is_time else 0.8),
                marker={"color": color, "line": {"width": 0}},
                name=f"{name} key",
                text=axis.hover[sel],
                hovertemplate="%{text}<br>score %{y:.4f}<extra>" + name + "</extra>",
                textposition="none",
            )
        )
    if threshold is not None:
        fig.add_hline(
            y=threshold,
            line={"color": ACCENT_COLOR, "dash": "dash", "width": 2},
            annotation_text=f"top-k threshold {threshold:.3g}",
            annotation_position="top left",
        )
    title = f"{record.name}: key scores (Σ over queries), {_head_label(h, record.heads)}"
    sub = []
    if record.keep_ratio is not None:
        sub.append(f"keep_ratio {record.keep_ratio:.2f}")
    if kept is not None:
        sub.append(f"{int(kept.sum())} kept / {length}")
    if h is None and record.heads > 1 and kept is not None:
        sub.append("kept = kept by any head; thresholds differ per head")
    if sub:
        title += "<br><sup>" + " · ".join(sub) + "</sup>"
    fig.update_layout(
        title={"text": title},
        xaxis=_axis_layout(axis),
        yaxis={"title": {"text": "key score"}},
        barmode="overlay",
        bargap=0.1,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 1, "xanchor": "right"},
        margin={"t": 100},
    )
    return fig


# --------------------------------------------------------------------------- audio views


def kept_intervals(record: AttentionRecord, head: Head = "mean") -> list[tuple[float, float]]:
    """Time spans [start, end] of the kept keys of an audio-key record (contiguous keys merged).

    For ``head='mean'`` a frame counts as kept if at least one head keeps it.
    """
    _check_record(record)
    times = _times(record.key_labels)
    if times is None:
        raise InputError(
            f"Record {record.name!r} has no times on its key axis ({record.key_labels.kind}), "
            "so its kept keys cannot be placed on the audio."
        )
    _, kept = head_key_scores(record, head)
    start, end = times
    if kept is None:
        kept = np.ones(len(start), dtype=bool)
    spans: list[tuple[float, float]] = []
    for i in np.flatnonzero(kept):
        if spans and start[i] <= spans[-1][1] + 1e-6:
            spans[-1] = (spans[-1][0], max(spans[-1][1], float(end[i])))
        else:
            spans.append((float(start[i]), float(end[i])))
    return spans


def _words_list(words: Sequence[Word] | None) -> list[Word]:
    if words is None:
        return []
    out = []
    for w in words:
        if not isinstance(w, Word):
            raise InputError("Words must come from the transcript aligner (text with times).")
        out.append(w)
    return out


def _add_words(fig: go.Figure, words: list[Word], y_text: float, yref: str) -> None:
    """Words at their times: a thin line at each word start and the word above it."""
    for w in words:
        fig.add_vrect(
            x0=w.start, x1=w.end, fillcolor="#56B4E9", opacity=0.08, line_width=0, layer="below"
        )
        fig.add_vline(x=w.start, line={"color": "#555555", "width": 0.6, "dash": "dot"})
        fig.add_annotation(
            x=(w.start + w.end) / 2,
            y=y_text,
            xref="x",
            yref=yref,
            text=html.escape(w.text),
            showarrow=False,
            yanchor="bottom",
            font={"size": 11},
            textangle=-30 if len(words) > 12 else 0,
            hovertext=f"{html.escape(w.text)}: {w.start:.2f}–{w.end:.2f} s",
        )


def _spans_from(
    record: AttentionRecord | None, spans: Sequence[tuple[float, float]] | None, head: Head
) -> tuple[list[tuple[float, float]] | None, str]:
    if spans is not None and record is not None:
        raise InputError("Give either kept intervals or a record, not both.")
    if record is not None:
        return kept_intervals(record, head), f"kept keys of {record.name}"
    if spans is not None:
        return [(float(a), float(b)) for a, b in spans], "kept frames"
    return None, ""


def waveform_figure(
    audio: np.ndarray,
    sr: int,
    words: Sequence[Word] | None = None,
    kept: Sequence[tuple[float, float]] | None = None,
    record: AttentionRecord | None = None,
    head: Head = "mean",
) -> go.Figure:
    """Waveform with the kept frames of an audio-key record shaded and words at their times."""
    audio = np.asarray(audio, dtype=np.float64).reshape(-1) if audio is not None else None
    if audio is None or audio.size == 0 or not np.isfinite(audio).all():
        raise InputError("The waveform is empty or holds invalid samples.")
    if not sr or sr <= 0:
        raise InputError("The sample rate must be a positive number.")
    words_ = _words_list(words)
    spans, span_name = _spans_from(record, kept, head)
    duration = audio.size / sr

    if audio.size > MAX_WAVEFORM_POINTS:
        # min/max envelope per bin: every peak stays visible at a fraction of the points.
        bins = MAX_WAVEFORM_POINTS // 2
        edges = np.linspace(0, audio.size, bins + 1).astype(int)
        lo = np.minimum.reduceat(audio, edges[:-1])
        hi = np.maximum.reduceat(audio, edges[:-1])
        t = (edges[:-1] + edges[1:]) / 2 / sr
        x = np.repeat(t, 2)
        y = np.column_stack([lo, hi]).reshape(-1)
    else:
        x = np.arange(audio.size) / sr
        y = audio
    peak = float(np.abs(audio).max()) or 1.0
    fig = go.Figure(
        go.Scatter(
            x=x, y=y, mode="lines", line={"color": "#333333", "width": 1}, name="waveform",
            hovertemplate="%{x:.3f} s<br>%{y:.3f}<extra></extra>",
        )
    )
    if spans:
        for a, b in spans:
            fig.add_vrect(x0=a, x1=b, fillcolor=KEPT_COLOR, opacity=0.25, line_width=0,
                          layer="below")
        fig.add_trace(
            go.Scatter(x=[None], y=[None], mode="markers", name=span_name,
                       marker={"symbol": "square", "size": 12, "color": KEPT_COLOR,
                               "opacity": 0.5})
        )
    _add_words(fig, words_, y_text=1.0, yref="paper")
    title = "Waveform"
    if spans is not None:
        covered = sum(b - a for a, b in spans)
        title += f"<br><sup>green = {span_name} ({covered:.2f} s of {duration:.2f} s)</sup>"
    fig.update_layout(
        title={"text": title},
        xaxis={"title": {"text": "time (s)"}, "range": [0, duration]},
        yaxis={"title": {"text": "amplitude"}, "range": [-1.1 * peak, 1.1 * peak]},
        showlegend=spans is not None,
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0},
        margin={"t": 110},
        height=340,
    )
    return fig


def spectrogram_figure(
    log_mel: np.ndarray,
    frame_times: np.ndarray,
    words: Sequence[Word] | None = None,
    record: AttentionRecord | None = None,
    head: Head = "mean",
    kept: Sequence[tuple[float, float]] | None = None,
) -> go.Figure:
    """Log-mel spectrogram [n_mels, T]; dropped frames dimmed, kept frames on a green strip."""
    spec = np.asarray(log_mel, dtype=np.float64)
    times = np.asarray(frame_times, dtype=np.float64).reshape(-1)
    if spec.ndim != 2 or 0 in spec.shape:
        raise InputError("The spectrogram must be a 2-D array [mel bins, frames].")
    if times.shape[0] != spec.shape[1]:
        raise InputError(
            f"The spectrogram has {spec.shape[1]} frames but {times.shape[0]} frame times."
        )
    words_ = _words_list(words)
    spans, span_name = _spans_from(record, kept, head)
    n_mels, n_frames = spec.shape
    step = float(np.median(np.diff(times))) if n_frames > 1 else 0.01
    t_end = float(times[-1] + step)

    title = "Log-mel spectrogram"
    block = math.ceil(n_frames / MAX_SPECTROGRAM_FRAMES)
    if block > 1:
        n_out = math.ceil(n_frames / block)
        padded = np.full((n_mels, n_out * block), np.nan)
        padded[:, :n_frames] = spec
        spec = np.nanmean(padded.reshape(n_mels, n_out, block), axis=2)
        t_pad = np.full(n_out * block, np.nan)
        t_pad[:n_frames] = times
        times = np.nanmean(t_pad.reshape(n_out, block), axis=1)
        title += f" (mean over {block}-frame blocks)"

    fig = go.Figure(
        go.Heatmap(
            z=spec, x=times, y=np.arange(n_mels), colorscale=SPECTROGRAM_COLORSCALE,
            colorbar={"title": {"text": "log-mel"}},
            hovertemplate="%{x:.3f} s<br>mel bin %{y}<br>%{z:.2f}<extra></extra>",
            name="spectrogram",
        )
    )
    strip_lo, strip_hi = n_mels - 0.5, n_mels - 0.5 + max(2.0, 0.07 * n_mels)
    if spans is not None:
        # dim what was dropped, and draw the kept spans on a strip above the mel bins
        edges = [0.0] + [v for ab in spans for v in ab] + [t_end]
        for a, b in zip(edges[0::2], edges[1::2]):
            if b > a + 1e-9:
                fig.add_shape(type="rect", x0=a, x1=b, y0=-0.5, y1=n_mels - 0.5, xref="x",
                              yref="y", fillcolor="black", opacity=0.45, line_width=0)
        for a, b in spans:
            fig.add_shape(type="rect", x0=a, x1=b, y0=strip_lo, y1=strip_hi, xref="x",
                          yref="y", fillcolor=KEPT_COLOR, opacity=1.0, line_width=0)
        covered = sum(b - a for a, b in spans)
        title += (f"<br><sup>green strip = {span_name} ({covered:.2f} s of {t_end:.2f} s); "
                  "dropped frames dimmed</sup>")
    _add_words(fig, words_, y_text=strip_hi + 0.5, yref="y")
    fig.update_layout(
        title={"text": title},
        xaxis={"title": {"text": "time (s)"}, "range": [float(times[0] - step / 2), t_end]},
        yaxis={"title": {"text": "mel bin"},
               "range": [-0.5, strip_hi + (0.25 * n_mels if words_ else 1.0)]},
        margin={"t": 90},
        height=380,
    )
    return fig


# --------------------------------------------------------------------------- transcript


def word_importance_html(
    words: Sequence[Word | str], scores: np.ndarray, keep: np.ndarray | None = None
) -> str:
    """The transcript as HTML: each word shaded by its key score, kept words bold+underlined."""
    texts = [w.text if isinstance(w, Word) else str(w) for w in words]
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != len(texts):
        raise InputError(f"{len(texts)} words but {scores.shape[0]} scores.")
    if keep is not None:
        keep = np.asarray(keep, dtype=bool).reshape(-1)
        if keep.shape[0] != len(texts):
            raise InputError(f"{len(texts)} words but {keep.shape[0]} keep flags.")
    top = float(np.nanmax(scores)) if scores.size and np.nanmax(scores) > 0 else 1.0
    spans = []
    for i, text in enumerate(texts):
        share = max(0.0, float(scores[i]) / top) if np.isfinite(scores[i]) else 0.0
        alpha = 0.08 + 0.72 * share
        style = [f"background-color: rgba(0,114,178,{alpha:.2f})",
                 f"color: {'white' if alpha > 0.55 else '#111'}",
                 "padding: 2px 4px", "margin: 1px", "border-radius: 4px"]
        state = ""
        if keep is not None:
            if keep[i]:
                style += ["font-weight: 700", "text-decoration: underline",
                          f"text-decoration-color: {KEPT_COLOR}", "text-decoration-thickness: 3px"]
                state = " · kept"
            else:
                style.append("opacity: 0.75")
                state = " · dropped"
        tip = f"score {scores[i]:.4f}{state}"
        spans.append(
            f'<span class="ser-word" title="{html.escape(tip)}" style="{"; ".join(style)}">'
            f"{html.escape(text)}</span>"
        )
    legend = ("<div style='font-size: 0.8em; color: #555; margin-top: 6px'>"
              "darker = higher key score")
    if keep is not None:
        legend += f"; <b><u>bold underlined</u></b> = kept ({int(keep.sum())} of {len(texts)})"
    legend += "</div>"
    return ("<div style='line-height: 2.2; font-size: 1.15em'>" + " ".join(spans)
            + "</div>" + legend)


# --------------------------------------------------------------------------- predictions


def probabilities_figure(
    labels: Sequence[str], probs: np.ndarray, true_label: str | None = None
) -> go.Figure:
    """Horizontal bars of class probabilities; the predicted class solid, others faded."""
    labels = [str(x) for x in labels]
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if probs.shape[0] != len(labels) or not labels:
        raise InputError(f"{len(labels)} class labels but {probs.shape[0]} probabilities.")
    if not np.isfinite(probs).all():
        raise InputError("The probabilities hold invalid values.")
    pred = int(np.argmax(probs))
    ticks = []
    for i, lab in enumerate(labels):
        t = f"<b>{lab}</b>" if i == pred else lab
        if true_label is not None and lab == true_label:
            t += " ✓ true"
        ticks.append(t)
    fig = go.Figure(
        go.Bar(
            x=probs,
            y=list(range(len(labels))),
            orientation="h",
            marker={"color": [class_color(x) for x in labels],
                    "opacity": [1.0 if i == pred else 0.45 for i in range(len(labels))],
                    "line": {"color": ["black" if i == pred else "rgba(0,0,0,0)"
                                       for i in range(len(labels))], "width": 2}},
            text=[f"{p:.1%}" for p in probs],
            textposition="outside",
            customdata=labels,
            hovertemplate="%{customdata}: %{x:.3f}<extra></extra>",
            name="probability",
        )
    )
    title = f"Prediction: <b>{labels[pred]}</b> ({probs[pred]:.1%})"
    if true_label is not None:
        title += f" · true: {true_label}"
    fig.update_layout(
        title={"text": title},
        xaxis={"title": {"text": "probability"}, "range": [0, 1.15]},
        yaxis={"tickmode": "array", "tickvals": list(range(len(labels))), "ticktext": ticks,
               "autorange": "reversed", "title": {"text": "class"}},
        height=120 + 38 * len(labels),
        showlegend=False,
    )
    return fig


def probability_curve_figure(
    keep_ratios: Sequence[float], probs: np.ndarray, labels: Sequence[str], x_title: str = "keep_ratio"
) -> go.Figure:
    """Class probabilities (one line per class) as keep_ratio (or ``x_title``, e.g. top_p) goes
    from sparse to dense."""
    ratios = np.asarray(keep_ratios, dtype=np.float64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    labels = [str(x) for x in labels]
    if probs.ndim != 2 or probs.shape != (ratios.shape[0], len(labels)):
        raise InputError(
            f"Expected probabilities of shape [{ratios.shape[0]} keep ratios, {len(labels)} "
            f"classes], got {probs.shape}."
        )
    order = np.argsort(ratios)
    fig = go.Figure()
    for c, lab in enumerate(labels):
        fig.add_trace(
            go.Scatter(
                x=ratios[order], y=probs[order, c], mode="lines+markers", name=lab,
                line={"color": class_color(lab), "width": 2.5},
                marker={"size": 7, "color": class_color(lab)},
                hovertemplate=f"{lab}<br>{x_title} %{{x:.2f}}<br>p %{{y:.3f}}<extra></extra>",
            )
        )
    fig.update_layout(
        title={"text": f"Class probabilities vs {x_title}"},
        xaxis={"title": {"text": {"keep_ratio": "keep_ratio (share of keys kept)",
                                  "top_p": "top_p (attention mass kept)"}.get(x_title, x_title)},
               "range": [min(0.0, float(ratios.min())) - 0.02, float(ratios.max()) + 0.02]},
        yaxis={"title": {"text": "probability"}, "range": [0, 1.02]},
        showlegend=True,
        legend={"title": {"text": "class"}},
    )
    return fig


def confusion_matrix_figure(
    cm: np.ndarray, labels: Sequence[str], normalize: bool = False
) -> go.Figure:
    """Annotated confusion matrix: rows = true class, columns = predicted (counts or row %)."""
    cm = np.asarray(cm, dtype=np.float64)
    labels = [str(x) for x in labels]
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(labels):
        raise InputError(f"A confusion matrix for {len(labels)} classes must be square "
                         f"{len(labels)}×{len(labels)}; got {cm.shape}.")
    counts = cm
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        z = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0) * 100
        text = [[f"{z[i, j]:.0f}%<br>({int(counts[i, j])})" for j in range(len(labels))]
                for i in range(len(labels))]
        bar_title, hover = "row %", "%{z:.1f}% of true %{y}"
    else:
        z = counts
        text = [[f"{int(v)}" for v in row] for row in counts]
        bar_title, hover = "count", "%{z:.0f}"
    idx = list(range(len(labels)))
    fig = go.Figure(
        go.Heatmap(
            z=z, x=idx, y=idx, colorscale="Blues", zmin=0,
            zmax=100 if normalize else max(1.0, float(z.max())),
            text=text, texttemplate="%{text}", textfont={"size": 13},
            customdata=[[[labels[i], labels[j]] for j in idx] for i in idx],
            hovertemplate="true %{customdata[0]} → predicted %{customdata[1]}<br>"
            + hover.replace("%{y}", "%{customdata[0]}") + "<extra></extra>",
            colorbar={"title": {"text": bar_title}},
        )
    )
    tick = {"tickmode": "array", "tickvals": idx, "ticktext": labels}
    fig.update_layout(
        title={"text": "Confusion matrix" + (" (row-normalised)" if normalize else " (counts)")},
        xaxis={**tick, "title": {"text": "predicted"}, "side": "bottom"},
        yaxis={**tick, "title": {"text": "true"}, "autorange": "reversed"},
        height=160 + 60 * len(labels),
        width=220 + 70 * len(labels),
    )
    return fig


def bar_figure(
    names: Sequence[str], values: Sequence[float] | np.ndarray, title: str,
    highlight: int | None = None, value_title: str = "value",
) -> go.Figure:
    """Plain bars (e.g. MFSN's α over levels); ``highlight`` marks one bar in the accent colour."""
    names = [str(x) for x in names]
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.shape[0] != len(names) or not names:
        raise InputError(f"{len(names)} names but {values.shape[0]} values.")
    colors = ["#0072B2"] * len(names)
    if highlight is not None:
        if not 0 <= highlight < len(names):
            raise InputError(f"Bar {highlight} does not exist ({len(names)} bars).")
        colors[highlight] = ACCENT_COLOR
    fig = go.Figure(
        go.Bar(x=list(range(len(names))), y=values, marker={"color": colors},
               customdata=names, hovertemplate="%{customdata}: %{y:.4g}<extra></extra>",
               text=[f"{v:.3g}" for v in values], textposition="outside", name=value_title)
    )
    top = float(values.max()) if values.max() > 0 else 1.0
    fig.update_layout(
        title={"text": html.escape(title)},
        xaxis={"tickmode": "array", "tickvals": list(range(len(names))), "ticktext": names},
        yaxis={"title": {"text": value_title},
               "range": [min(0.0, float(values.min()) * 1.15), top * 1.15]},
        showlegend=False,
    )
    return fig


def nucleus_overlay_figure(
    image: np.ndarray, keep_mask: np.ndarray, weights: np.ndarray | None = None,
    title: str = "Kept points (nucleus)",
) -> go.Figure:
    """A spectrogram chunk or face crop with the kept points of a nucleus mask overlaid.

    ``keep_mask`` is [H, W] like the image or a coarser grid [h, w] of patches laid evenly
    over it; kept cells are tinted (by ``weights`` when given), dropped cells stay plain.
    """
    img = np.asarray(image)
    mask = np.asarray(keep_mask, dtype=bool)
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)) or img.size == 0:
        raise InputError("The image must be [H, W] (spectrogram / grey) or [H, W, 3] (colour).")
    if mask.ndim != 2 or mask.size == 0:
        raise InputError("The keep mask must be a 2-D grid of kept points.")
    height, width = img.shape[:2]
    gh, gw = mask.shape
    if gh > height or gw > width:
        raise InputError(f"The keep mask {mask.shape} is finer than the image {img.shape[:2]}.")
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != mask.shape:
            raise InputError(f"Weights {weights.shape} must match the keep mask {mask.shape}.")

    if img.ndim == 3:
        rgb = img[..., :3]
        if rgb.dtype.kind == "f" and rgb.max() <= 1.0:
            rgb = rgb * 255
        base = go.Image(z=np.clip(rgb, 0, 255).astype(np.uint8), hoverinfo="skip")
    else:
        base = go.Heatmap(z=img.astype(np.float64), colorscale="Greys", reversescale=True,
                          showscale=False, hoverinfo="skip", name="image")
    fig = go.Figure(base)
    # grid centres in image pixel coordinates
    xs = (np.arange(gw) + 0.5) * width / gw - 0.5
    ys = (np.arange(gh) + 0.5) * height / gh - 0.5
    value = weights if weights is not None else np.ones(mask.shape)
    overlay = np.where(mask, value, np.nan)
    fig.add_trace(
        go.Heatmap(
            z=overlay, x=xs, y=ys, colorscale="Viridis" if weights is not None
            else [[0, KEPT_COLOR], [1, KEPT_COLOR]],
            opacity=0.5, showscale=weights is not None,
            colorbar={"title": {"text": "weight"}},
            hovertemplate="row %{y:.0f}, col %{x:.0f}<br>value %{z:.4f}<extra>kept</extra>",
            name="kept point",
        )
    )
    fig.update_layout(
        title={"text": f"{html.escape(title)}<br><sup>{int(mask.sum())} of {mask.size} "
                       "points kept (tinted)</sup>"},
        xaxis={"title": {"text": "column"}, "range": [-0.5, width - 0.5], "showgrid": False},
        yaxis={"title": {"text": "row"}, "range": [height - 0.5, -0.5], "showgrid": False,
               "scaleanchor": "x"},
        height=520,
        width=int(min(1100, max(420, 400 * width / height + 200))),
    )
    return fig


# --------------------------------------------------------------------------- exports


def record_to_csv(record: AttentionRecord, head: Head = "mean") -> str:
    """One row per (query, key): query, key, query_time, key_time, weight, kept (long format).

    Times are each position's start in seconds (empty where the axis has no times); ``kept``
    is the keep mask for that cell (True where the record drops nothing).
    """
    z = head_weights(record, head)
    tq, tk = z.shape
    keep = head_keep(record, head)
    if keep is None:
        kept = np.ones((tq, tk), dtype=bool)
    elif keep.over == "columns":
        kept = np.broadcast_to(keep.mask[None, :], (tq, tk))
    else:
        kept = keep.mask
    q_times, k_times = _times(record.query_labels), _times(record.key_labels)
    q_t = q_times[0] if q_times is not None else np.full(tq, np.nan)
    k_t = k_times[0] if k_times is not None else np.full(tk, np.nan)
    frame = pd.DataFrame({
        "query": np.repeat(np.asarray(record.query_labels.names, dtype=object), tk),
        "key": np.tile(np.asarray(record.key_labels.names, dtype=object), tq),
        "query_time": np.repeat(q_t, tk),
        "key_time": np.tile(k_t, tq),
        "weight": z.reshape(-1),
        "kept": np.asarray(kept).reshape(-1),
    })
    return frame.to_csv(index=False, float_format="%.6g")


def trace_to_json(trace: AttentionTrace, with_weights: bool = True) -> str:
    """The whole trace as JSON (``AttentionTrace.to_json``)."""
    if not isinstance(trace, AttentionTrace):
        raise InputError("Expected an attention trace from a model's output.")
    return trace.to_json(with_weights=with_weights)


# --------------------------------------------------------------------------- PNG (matplotlib)

_TAG = re.compile(r"<[^>]+>")
_SYMBOLS = {"x": "x", "square": "s", "circle": "o", "diamond": "D", "cross": "P"}
_HATCH = {"/": "///", "\\": "\\\\\\", "x": "xxx", "-": "---", "|": "|||", "+": "+++", ".": "..."}


def _plain(text: object) -> str:
    """Plotly's mini-HTML to plain text (line breaks kept)."""
    if text is None:
        return ""
    s = str(text).replace("<br>", "\n").replace("<br/>", "\n")
    return html.unescape(_TAG.sub("", s))


def _mpl_color(color: object, opacity: float | None = None) -> tuple[float, ...] | str:
    """A plotly colour string ('#hex', 'rgb()', 'rgba()', name) as a matplotlib RGBA tuple."""
    from matplotlib.colors import to_rgba

    if color is None:
        return (0, 0, 0, 0)
    s = str(color).strip()
    m = re.match(r"rgba?\(([^)]*)\)", s)
    if m:
        parts = [float(p) for p in m.group(1).split(",")]
        rgba = (parts[0] / 255, parts[1] / 255, parts[2] / 255, parts[3] if len(parts) > 3 else 1.0)
    else:
        rgba = to_rgba(s)
    if opacity is not None:
        rgba = (*rgba[:3], rgba[3] * float(opacity))
    return rgba


def _mpl_cmap(colorscale: object, reverse: bool = False):
    from matplotlib.colors import LinearSegmentedColormap

    stops = [(float(p), _mpl_color(c)) for p, c in colorscale]
    if reverse:
        stops = [(1 - p, c) for p, c in reversed(stops)]
    return LinearSegmentedColormap.from_list("plotly", stops)


def _edges(centres: np.ndarray) -> np.ndarray:
    c = np.asarray(centres, dtype=np.float64)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[:-1] + c[1:]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def _ref_transform(ax, xref: str | None, yref: str | None):
    """The matplotlib transform for plotly's xref/yref ('x', 'paper', 'x domain', ...)."""
    from matplotlib.transforms import blended_transform_factory

    x_axes = xref is not None and ("paper" in xref or "domain" in xref)
    y_axes = yref is not None and ("paper" in yref or "domain" in yref)
    return blended_transform_factory(ax.transAxes if x_axes else ax.transData,
                                     ax.transAxes if y_axes else ax.transData)


def _draw_heatmap(ax, fig_mpl, trace) -> None:
    z = np.asarray(trace.z, dtype=np.float64)
    x = np.asarray(trace.x, dtype=np.float64) if trace.x is not None else np.arange(z.shape[1])
    y = np.asarray(trace.y, dtype=np.float64) if trace.y is not None else np.arange(z.shape[0])
    cmap = _mpl_cmap(trace.colorscale or go.Heatmap(colorscale="Viridis").colorscale,
                     bool(trace.reversescale))
    zmin = trace.zmin if trace.zmin is not None else np.nanmin(z)
    zmax = trace.zmax if trace.zmax is not None else np.nanmax(z)
    mesh = ax.pcolormesh(_edges(x), _edges(y), np.ma.masked_invalid(z), cmap=cmap,
                         vmin=zmin, vmax=zmax, alpha=trace.opacity, shading="flat",
                         rasterized=True)
    if trace.showscale is not False and trace.hoverinfo != "skip":
        bar = fig_mpl.colorbar(mesh, ax=ax, fraction=0.04, pad=0.02)
        if trace.colorbar and trace.colorbar.title and trace.colorbar.title.text:
            bar.set_label(_plain(trace.colorbar.title.text))
    if trace.texttemplate and trace.text is not None and z.size <= 900:
        text = np.asarray(trace.text, dtype=object)
        for i, yy in enumerate(y):
            for j, xx in enumerate(x):
                dark = np.isfinite(z[i, j]) and (z[i, j] - zmin) > 0.55 * (zmax - zmin)
                ax.text(xx, yy, _plain(text[i, j]), ha="center", va="center", fontsize=9,
                        color="white" if dark else "black")


def _draw_bar(ax, trace, labels: list) -> None:
    xs = np.asarray(trace.x, dtype=np.float64)
    ys = np.asarray(trace.y, dtype=np.float64)
    n = xs.size
    marker = trace.marker
    color = marker.color if marker and marker.color is not None else "#0072B2"
    colors = list(color) if isinstance(color, (list, tuple, np.ndarray)) else [color] * n
    opac = marker.opacity if marker and marker.opacity is not None else 1.0
    opacs = list(opac) if isinstance(opac, (list, tuple, np.ndarray)) else [opac] * n
    rgba = [_mpl_color(c, o) for c, o in zip(colors, opacs)]
    width = trace.width if trace.width is not None else 0.8
    widths = np.broadcast_to(np.asarray(width, dtype=np.float64), (n,))
    base = np.broadcast_to(np.asarray(trace.base if trace.base is not None else 0.0,
                                      dtype=np.float64), (n,))
    hatch = None
    if marker and marker.pattern and marker.pattern.shape:
        hatch = _HATCH.get(marker.pattern.shape, "///")
    label = trace.name if trace.showlegend is not False and trace.name else None
    kw = {"color": rgba, "hatch": hatch, "edgecolor": "white" if hatch else None,
          "linewidth": 0, "label": label}
    if trace.orientation == "h":
        bars = ax.barh(ys, xs, height=widths, left=base, **kw)
        values = xs
    else:
        bars = ax.bar(xs, ys, width=widths, bottom=base, **kw)
        values = ys
    labels.append(label)
    if trace.text is not None and trace.textposition == "outside":
        texts = np.asarray(trace.text, dtype=object)
        for b, t, v in zip(bars, np.broadcast_to(texts, (n,)), values):
            if trace.orientation == "h":
                ax.text(b.get_x() + b.get_width() + 0.01 * (ax.get_xlim()[1] or 1),
                        b.get_y() + b.get_height() / 2, _plain(t), va="center", fontsize=9)
            else:
                ax.text(b.get_x() + b.get_width() / 2, b.get_y() + b.get_height(), _plain(t),
                        ha="center", va="bottom", fontsize=9)


def _draw_scatter(ax, trace, labels: list) -> None:
    if trace.x is None or all(v is None for v in trace.x):
        # legend-only entry
        if trace.name:
            m = trace.marker
            ax.scatter([], [], marker=_SYMBOLS.get(m.symbol or "circle", "o"), s=80,
                       color=_mpl_color(m.color or "#333", m.opacity), label=trace.name)
            labels.append(trace.name)
        return
    x = np.asarray(trace.x, dtype=np.float64)
    y = np.asarray(trace.y, dtype=np.float64)
    mode = trace.mode or "lines"
    line_color = (trace.line.color if trace.line and trace.line.color else "#333333")
    lw = (trace.line.width if trace.line and trace.line.width else 1.5) * 0.75
    label = trace.name if trace.name and trace.showlegend is not False else None
    if "lines" in mode:
        ax.plot(x, y, color=_mpl_color(line_color), linewidth=lw, label=label)
        label = None  # one legend entry per trace
    if "markers" in mode:
        m = trace.marker
        color = m.color if m and m.color is not None else line_color
        ax.scatter(x, y, marker=_SYMBOLS.get(m.symbol or "circle", "o") if m else "o",
                   s=((m.size or 6) if m else 6) ** 2 * 0.6,
                   color=_mpl_color(color, m.opacity if m else None), label=label, zorder=3)
    labels.append(trace.name)


def _draw_layout(ax, layout) -> None:
    for shape in layout.shapes or ():
        tr = _ref_transform(ax, shape.xref, shape.yref)
        opacity = shape.opacity if shape.opacity is not None else 1.0
        z = 0.5 if shape.layer == "below" else 2.5
        if shape.type == "rect":
            from matplotlib.patches import Rectangle

            ax.add_patch(Rectangle((shape.x0, shape.y0), shape.x1 - shape.x0,
                                   shape.y1 - shape.y0, transform=tr, linewidth=0,
                                   facecolor=_mpl_color(shape.fillcolor or "grey", opacity),
                                   zorder=z))
        elif shape.type == "line":
            line = shape.line
            dash = {"dash": "--", "dot": ":", "dashdot": "-."}.get(line.dash if line else None, "-")
            ax.plot([shape.x0, shape.x1], [shape.y0, shape.y1], transform=tr,
                    color=_mpl_color(line.color if line and line.color else "#444", opacity),
                    linewidth=(line.width if line and line.width else 1) * 0.9, linestyle=dash,
                    zorder=z)
    for ann in layout.annotations or ():
        tr = _ref_transform(ax, ann.xref, ann.yref)
        va = {"bottom": "bottom", "top": "top"}.get(ann.yanchor, "center")
        ha = {"left": "left", "right": "right"}.get(ann.xanchor, "center")
        ax.text(ann.x, ann.y, _plain(ann.text), transform=tr, ha=ha, va=va,
                rotation=-(ann.textangle or 0), fontsize=(ann.font.size or 11) * 0.85,
                clip_on=False, zorder=4)


def _style_axis(ax, axis, which: str) -> None:
    set_label = ax.set_xlabel if which == "x" else ax.set_ylabel
    if axis.title and axis.title.text:
        set_label(_plain(axis.title.text))
    if axis.tickvals is not None:
        set_ticks = ax.set_xticks if which == "x" else ax.set_yticks
        set_ticks(list(axis.tickvals), [_plain(t) for t in (axis.ticktext or axis.tickvals)],
                  rotation=(-axis.tickangle if axis.tickangle else 0) if which == "x" else 0,
                  ha="right" if which == "x" and axis.tickangle else "center" if which == "x"
                  else "right", fontsize=8 if len(axis.tickvals) > 20 else 9)
    set_lim = ax.set_xlim if which == "x" else ax.set_ylim
    if axis.range is not None:
        set_lim(*axis.range)
    if axis.autorange == "reversed":
        (ax.invert_xaxis if which == "x" else ax.invert_yaxis)()


def figure_to_png(
    fig: go.Figure, width: int | None = None, height: int | None = None, scale: float = 1.0
) -> bytes:
    """Render a figure from this module to PNG bytes with matplotlib (no browser needed).

    The image is exactly ``width·scale × height·scale`` pixels (defaults: the figure's own
    layout size, else 900×500).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(fig, go.Figure):
        raise InputError("Only plotly figures can be exported to PNG.")
    width = int(width or fig.layout.width or 900)
    height = int(height or fig.layout.height or 500)
    if width < 50 or height < 50 or scale <= 0:
        raise InputError("A PNG needs a width and height of at least 50 pixels.")
    dpi = 100 * scale
    fig_mpl = Figure(figsize=(width / 100, height / 100), dpi=dpi)
    FigureCanvasAgg(fig_mpl)
    ax = fig_mpl.add_subplot(1, 1, 1)
    # axes ranges first so that text placed 'outside' bars can use them
    if fig.layout.xaxis.range is not None:
        ax.set_xlim(*fig.layout.xaxis.range)
    labels: list = []
    for trace in fig.data:
        if isinstance(trace, go.Heatmap):
            _draw_heatmap(ax, fig_mpl, trace)
        elif isinstance(trace, go.Bar):
            _draw_bar(ax, trace, labels)
        elif isinstance(trace, go.Scatter):
            _draw_scatter(ax, trace, labels)
        elif isinstance(trace, go.Image):
            ax.imshow(np.asarray(trace.z, dtype=np.uint8), origin="upper")
    _draw_layout(ax, fig.layout)
    _style_axis(ax, fig.layout.xaxis, "x")
    _style_axis(ax, fig.layout.yaxis, "y")
    if fig.layout.yaxis.scaleanchor == "x":
        ax.set_aspect("equal")
    title = _plain(fig.layout.title.text)
    if title:
        ax.set_title(title, fontsize=11, loc="left", pad=24 if fig.layout.annotations else 8)
    named = [x for x in labels if x]
    asked = any(getattr(t, "showlegend", None) is True for t in fig.data)
    if named and fig.layout.showlegend is not False and (
        len(named) > 1 or fig.layout.showlegend or asked
    ):
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    fig_mpl.tight_layout()
    buffer = io.BytesIO()
    fig_mpl.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# --------------------------------------------------------------------------- deletion test

#: Line colour and dash of each deletion-test ranking (random: grey, dashed).
RANKING_STYLES: dict[str, tuple[str, str]] = {
    "attention": (KEPT_COLOR, "solid"),
    "integrated_gradients": ("#0072B2", "solid"),
    "input_x_gradient": ("#56B4E9", "dot"),
    "rollout": ("#CC79A7", "dashdot"),
    "random": ("#999999", "dash"),
}
RANKING_TITLES: dict[str, str] = {
    "attention": "attention (this layer)",
    "integrated_gradients": "Integrated Gradients",
    "input_x_gradient": "gradient × input",
    "rollout": "attention rollout",
    "random": "random",
}


def deletion_curves_figure(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]],
    p_orig: float,
    emotion: str,
    unit: str = "words",
    aopc: dict[str, float] | None = None,
) -> go.Figure:
    """The deletion test's curves: the predicted class's probability (y, %) after removing the
    top-ranked share of ``unit`` (x, %), one line per ranking ({ranking: (shares, probs)}),
    each starting at the original probability; the legend gives each ranking's AOPC."""
    if not 0.0 <= float(p_orig) <= 1.0:
        raise InputError(f"p_orig must be a probability; got {p_orig}.")
    fig = go.Figure()
    x_max = 50.0
    for ranking, (shares, probs) in curves.items():
        x = np.concatenate([[0.0], np.asarray(shares, dtype=np.float64).reshape(-1)]) * 100
        y = np.concatenate([[p_orig], np.asarray(probs, dtype=np.float64).reshape(-1)]) * 100
        if x.shape != y.shape:
            raise InputError(f"{ranking}: {x.shape[0] - 1} shares but {y.shape[0] - 1} probabilities.")
        x_max = max(x_max, float(x.max()))
        color, dash = RANKING_STYLES.get(ranking, (EXTRA_COLORS[len(fig.data) % len(EXTRA_COLORS)], "solid"))
        name = RANKING_TITLES.get(ranking, ranking)
        if aopc and ranking in aopc:
            name += f" · AOPC {aopc[ranking]:+.2f}"
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", name=name,
            line={"color": color, "dash": dash, "width": 3 if ranking == "attention" else 2},
            marker={"size": 6, "color": color},
            hovertemplate=f"{html.escape(name)}<br>%{{x:.0f}} % of {unit} removed<br>"
                          f"p({html.escape(emotion)}) %{{y:.1f}} %<extra></extra>",
        ))
    fig.add_hline(y=float(p_orig) * 100, line={"color": "#555", "dash": "dot", "width": 1})
    fig.update_layout(
        title={"text": f"Removing the top-ranked {unit}: p({emotion})", "font": {"size": 14}},
        xaxis={"title": {"text": f"share of {unit} removed (%)"}, "range": [-2, x_max + 2], "ticksuffix": " %"},
        yaxis={"title": {"text": f"p({emotion}) (%)"}, "range": [0, 102]},
        height=320, margin={"l": 50, "r": 10, "t": 40, "b": 45},
        legend={"font": {"size": 11}, "orientation": "h", "y": -0.3},
    )
    return fig
