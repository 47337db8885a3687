"""The deletion test's figure: the predicted class's probability as the top-ranked words or
frames are removed, one line per ranking (attention, gradients, rollout, random)."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ser_core.errors import InputError

from .palette import EXTRA_COLORS, KEPT_COLOR

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
