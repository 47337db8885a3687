"""Prediction and evaluation charts: class probabilities, probabilities vs keep_ratio / top_p,
confusion matrix and plain bars (e.g. MFSN's α over levels)."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ser_core.data.base import emotion_word
from ser_core.errors import InputError

from .palette import ACCENT_COLOR, class_color

def _checked_probabilities(labels: Sequence[str], probs: np.ndarray) -> tuple[list[str], np.ndarray, int]:
    """Labels as strings, probabilities as a flat float array (one per label, finite), and the
    predicted class's index; InputError otherwise."""
    labels = [str(x) for x in labels]
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if probs.shape[0] != len(labels) or not labels:
        raise InputError(f"{len(labels)} class labels but {probs.shape[0]} probabilities.")
    if not np.isfinite(probs).all():
        raise InputError("The probabilities hold invalid values.")
    return labels, probs, int(np.argmax(probs))


def probabilities_figure(
    labels: Sequence[str], probs: np.ndarray, true_label: str | None = None
) -> go.Figure:
    """Horizontal bars of class probabilities; the predicted class solid, others faded."""
    labels, probs, pred = _checked_probabilities(labels, probs)
    ticks = []
    for i, lab in enumerate(labels):
        t = f"<b>{emotion_word(lab)}</b>" if i == pred else emotion_word(lab)
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
            customdata=[emotion_word(lab) for lab in labels],
            hovertemplate="%{customdata}: %{x:.3f}<extra></extra>",
            name="probability",
        )
    )
    title = f"Prediction: <b>{emotion_word(labels[pred])}</b> ({probs[pred]:.1%})"
    if true_label is not None:
        title += f" · true: {emotion_word(true_label)}"
    fig.update_layout(
        title={"text": title},
        xaxis={"title": {"text": "probability"}, "range": [0, 1.15]},
        yaxis={"tickmode": "array", "tickvals": list(range(len(labels))), "ticktext": ticks,
               "autorange": "reversed", "title": {"text": "emotion"}},
        height=120 + 38 * len(labels),
        showlegend=False,
    )
    return fig


def probabilities_html(labels: Sequence[str], probs: np.ndarray, true_label: str | None = None) -> str:
    """The class probabilities as plain HTML bars (what the Analyze page shows): the same content
    as :func:`probabilities_figure` (predicted class solid and outlined, the others faded, the true
    class marked), without a plotly figure for the browser to redraw on every slider move."""
    labels, probs, pred = _checked_probabilities(labels, probs)
    rows = []
    for i, (lab, p) in enumerate(zip(labels, probs)):
        name = html.escape(emotion_word(lab)) + (" ✓ true" if true_label is not None and lab == true_label else "")
        chosen = i == pred
        bar = (f"width: {100 * min(max(p, 0.0), 1.0):.1f}%; height: 100%; background: {class_color(lab)}; "
               f"opacity: {1.0 if chosen else 0.45}; border-radius: 3px; box-sizing: border-box"
               + ("; border: 2px solid black" if chosen else ""))
        rows.append(
            f"<div class='ser-prob' title='{html.escape(emotion_word(lab))}: {p:.3f}' style='display: flex; "
            f"align-items: center; gap: 8px; margin: 4px 0; font-weight: {700 if chosen else 400}'>"
            f"<span style='width: 8.5em; text-align: right'>{name}</span>"
            f"<span style='flex: 1; height: 1.2em; background: #eeeeee; border-radius: 3px'>"
            f"<span style='display: block; {bar}'></span></span>"
            f"<span style='width: 3.6em'>{p:.1%}</span></div>")
    return "<div class='ser-probs' style='margin: 6px 0 12px 0'>" + "".join(rows) + "</div>"


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
                x=ratios[order], y=probs[order, c], mode="lines+markers", name=emotion_word(lab),
                line={"color": class_color(lab), "width": 2.5},
                marker={"size": 7, "color": class_color(lab)},
                hovertemplate=f"{emotion_word(lab)}<br>{x_title} %{{x:.2f}}<br>p %{{y:.3f}}<extra></extra>",
            )
        )
    fig.update_layout(
        title={"text": f"Class probabilities vs {x_title}"},
        xaxis={"title": {"text": {"keep_ratio": "keep_ratio (share of keys kept)",
                                  "top_p": "top_p (attention mass kept)"}.get(x_title, x_title)},
               "range": [min(0.0, float(ratios.min())) - 0.02, float(ratios.max()) + 0.02]},
        yaxis={"title": {"text": "probability"}, "range": [0, 1.02]},
        showlegend=True,
        legend={"title": {"text": "emotion"}},
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
