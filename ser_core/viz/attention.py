"""Attention views: the attention map heatmap, key-score bars and nucleus (MESM) keep masks.

Large maps
    A map with more than :data:`~ser_core.viz.palette.MAX_CELLS_PER_AXIS` positions on an axis is
    max-pooled over blocks (the title says so), so a 1500×1500 frame map stays responsive in the
    browser; max-pooling keeps every peak visible.

Key-sparse records (KS-Transformer) hatch their dropped key columns; nucleus records grey out the
dropped points of the map, and :func:`nucleus_overlay_figure` tints the kept points of a mask
over the spectrogram chunk or face crop it was taken from.
"""

from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go

from ser_core.errors import InputError
from ser_core.trace import AttentionRecord

from .palette import (
    ACCENT_COLOR, ATTENTION_COLORSCALE, DROPPED_COLOR, KEPT_COLOR, KEPT_OUTLINE, MAX_CELLS_PER_AXIS,
)
from .records import (
    Head, _any_pool_1d, _axis, _axis_layout, _head_index, _head_label, head_key_scores,
    head_keep, head_weights, max_pool_2d, top_k_threshold,
)

def attention_heatmap(
    record: AttentionRecord, head: Head = "mean", max_cells: int = MAX_CELLS_PER_AXIS,
    zmax: float | None = None, compact: bool = False,
) -> go.Figure:
    """Heatmap of one attention map: queries down, keys across; dropped keys hatched grey.

    Word axes are categorical (words as ticks), frame axes are time in seconds. Above
    ``max_cells`` positions on an axis the map is max-pooled over blocks (said in the title).
    ``zmax`` fixes the top of the colour scale (maps drawn side by side share one scale);
    by default it is this map's largest weight. ``compact`` (a narrow column): the title keeps
    only the notes, one per line, and the legend goes.
    """
    z = head_weights(record, head)
    h = _head_index(record, head)
    if max_cells < 2:
        raise InputError("The heatmap size cap must be at least 2 cells per axis.")
    # blocks of the map as stored (a long clip's record is pooled already: record.pool), then
    # of this drawing; a block of blocks is a block of the full map (both start at 0)
    extra_q, extra_k = math.ceil(z.shape[0] / max_cells), math.ceil(z.shape[1] / max_cells)
    if extra_q > 1 or extra_k > 1:
        z = max_pool_2d(z, extra_q, extra_k)
    tq, tk = len(record.query_labels), len(record.key_labels)
    bq, bk = record.pool[0] * extra_q, record.pool[1] * extra_k
    keep = head_keep(record, head)
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

    # A word axis is categorical (its labels unique): hover shows the word from the axis itself,
    # so no text per cell is sent (that text was 70 % of a 10 s clip's map and slowed every redraw).
    xs = ka.positions if ka.is_time else np.asarray(ka.categories)
    ys = qa.positions if qa.is_time else np.asarray(qa.categories)
    heat = go.Heatmap(
        z=z,
        x=xs,
        y=ys,
        colorscale=ATTENTION_COLORSCALE,
        zmin=0.0,
        zmax=float(zmax) if zmax is not None and zmax > 0 else float(z.max()) if z.max() > 0 else 1.0,
        colorbar={"title": {"text": "max weight" if (bq > 1 or bk > 1) else "weight"}},
        name="attention",
    )
    query = f"query {'≈' if bq > 1 else ''}%{{y:.3f}} s" if qa.is_time else "query: %{y}"
    key = f"key {'≈' if bk > 1 else ''}%{{x:.3f}} s" if ka.is_time else "key: %{x}"
    heat.hovertemplate = f"{query}<br>{key}<br>weight %{{z:.4f}}<extra></extra>"
    traces = [heat]

    if keep is not None and keep.over == "columns":
        dropped = ~(_any_pool_1d(keep.mask, bk) if bk > 1 else keep.mask)
        if dropped.any():
            traces.append(
                go.Bar(  # on a hidden 0–1 axis over the map: full height whatever the query axis
                    x=xs[dropped],
                    y=np.ones(int(dropped.sum())),
                    base=0.0,
                    yaxis="y2",
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
            notes.append("hatched = not kept by at least half of the heads")
    elif keep is not None:  # nucleus: kept points of the map
        cells = keep.mask.astype(np.float64)
        if bq > 1 or bk > 1:
            cells = max_pool_2d(cells, bq, bk)
        overlay = np.where(cells > 0, np.nan, 1.0)
        if np.isfinite(overlay).any():
            traces.append(
                go.Heatmap(
                    z=overlay,
                    x=xs,
                    y=ys,
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

    if compact:  # the page names the layer and says what hatching means
        title = "<br>".join(f"<sup>{note}</sup>" for note in notes if not note.startswith("hatched"))
    elif notes:
        title += "<br><sup>" + " · ".join(notes) + "</sup>"
    # the layout given to the constructor: Figure.update_layout validated it ~3× slower, on every
    # keep_ratio move of the Analyze page
    return go.Figure(data=traces, layout=dict(
        title={"text": title},
        showlegend=not compact,
        xaxis=_axis_layout(ka, categorical=not ka.is_time),
        yaxis=_axis_layout(qa, reversed_=True, categorical=not qa.is_time),
        yaxis2={"overlaying": "y", "range": [0, 1], "visible": False, "fixedrange": True},
        barmode="overlay",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 1, "xanchor": "right"},
        height=max(420, min(800, 24 * len(qa.names) + 200)) if not qa.is_time else 600,
        margin={"t": 110},
    ))


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
        sub.append("kept = kept by at least half of the heads; thresholds differ per head")
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


def nucleus_overlay_figure(
    image: np.ndarray, keep_mask: np.ndarray, weights: np.ndarray | None = None,
    title: str = "Kept points (nucleus)",
) -> go.Figure:
    """A spectrogram chunk or face crop with the kept points of a nucleus mask overlaid.

    ``keep_mask`` is [H, W] like the image or a coarser grid [h, w] of patches laid evenly
    over it; kept cells are tinted (by ``weights`` when given), dropped cells stay plain. The
    tint is each kept weight divided by the mean weight of the kept points (1 = an even share), so
    that a nearly flat attention reads as values near 1 rather than as tiny raw numbers. A face
    keeps its proportions; a spectrogram chunk (frequency × time) fills the figure.
    On a face the kept region is also outlined (one line trace along the borders between kept and
    dropped cells) and the tint is lighter, so the brows, eyes and mouth under it stay visible.
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
    mean = float(np.mean(weights[mask])) if weights is not None and mask.any() else 0.0
    value = weights / mean if weights is not None and mean > 0 else np.ones(mask.shape)
    overlay = np.where(mask, value, np.nan)
    face = img.ndim == 3
    fig.add_trace(
        go.Heatmap(
            z=overlay, x=xs, y=ys, colorscale="Viridis" if weights is not None
            else [[0, KEPT_COLOR], [1, KEPT_COLOR]],
            opacity=0.3 if face else 0.5, showscale=weights is not None,
            colorbar={"title": {"text": "÷ mean"}, "thickness": 12},
            hovertemplate="row %{y:.0f}, col %{x:.0f}<br>%{z:.3f} × the mean weight<extra>kept</extra>",
            name="kept point",
        )
    )
    if face:
        ex, ey = _outline(mask, width / gw, height / gh)
        fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line={"color": KEPT_OUTLINE, "width": 2},
                                 hoverinfo="skip", showlegend=False, name="kept cells' outline"))
    fig.update_layout(
        title={"text": f"{html.escape(title)}<br><sup>{int(mask.sum())} of {mask.size} "
                       f"points kept ({'outlined' if face else 'tinted'})</sup>"},
        xaxis={"title": {"text": "column" if face else "frame (10 ms)"}, "range": [-0.5, width - 0.5],
               "showgrid": False, "constrain": "domain"},
        yaxis={"title": {"text": "row" if face else "mel bands (low at the bottom)"},
               "range": [height - 0.5, -0.5], "showgrid": False, "constrain": "domain",
               **({"scaleanchor": "x"} if face else {"showticklabels": False})},
        height=460,
        margin={"l": 40, "r": 5, "t": 70, "b": 45},
    )
    return fig


def _outline(mask: np.ndarray, cell_w: float, cell_h: float) -> tuple[list[float | None], list[float | None]]:
    """Line segments (x, y with None between segments) along every side of a kept cell whose
    neighbour is dropped or outside the grid; pixel coordinates as the image's (-0.5 at the edge)."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1]
    xs: list[float | None] = []
    ys: list[float | None] = []
    # (neighbour slice, the side's two corners as (row, col) offsets from the cell's top-left)
    sides = ((padded[:-2, 1:-1], (0, 0), (0, 1)), (padded[2:, 1:-1], (1, 0), (1, 1)),
             (padded[1:-1, :-2], (0, 0), (1, 0)), (padded[1:-1, 2:], (0, 1), (1, 1)))
    for neighbour, a, b in sides:
        for r, c in zip(*np.nonzero(inner & ~neighbour)):
            xs += [(c + a[1]) * cell_w - 0.5, (c + b[1]) * cell_w - 0.5, None]
            ys += [(r + a[0]) * cell_h - 0.5, (r + b[0]) * cell_h - 0.5, None]
    return xs, ys


def point_attribution_figure(scores: np.ndarray, keep_mask: np.ndarray, title: str, face: bool = False,
                             share: tuple[float, float] | None = None) -> go.Figure:
    """A sparse layer's grid of points coloured by an attribution (e.g. Integrated Gradients summed
    over each cell's input points; red raises the predicted emotion, blue lowers it), with the
    cells the layer kept outlined: beside :func:`nucleus_overlay_figure`, whether the points the
    nucleus keeps are those that change the prediction. ``share``: (share of Σ|score| on kept
    cells, share of cells kept), said in the title. Row 0 is drawn at the top (flip a
    spectrogram's grid first to have low bands at the bottom)."""
    z = np.asarray(scores, dtype=np.float64)
    mask = np.asarray(keep_mask, dtype=bool)
    if z.ndim != 2 or z.shape != mask.shape or z.size == 0:
        raise InputError(f"Scores {z.shape} and keep mask {mask.shape} must be the same 2-D grid.")
    top = float(np.abs(z).max()) or 1.0
    gh, gw = mask.shape
    fig = go.Figure(go.Heatmap(
        z=z, x=np.arange(gw), y=np.arange(gh), colorscale="RdBu", reversescale=True, zmin=-top, zmax=top,
        colorbar={"title": {"text": "IG"}, "thickness": 12},
        hovertemplate="row %{y}, col %{x}<br>attribution %{z:.2e}<extra></extra>", name="attribution"))
    ex, ey = _outline(mask, 1.0, 1.0)
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line={"color": "#111111", "width": 2},
                             hoverinfo="skip", showlegend=False, name="kept cells' outline"))
    sub = "outlined: the points this layer kept"
    if share is not None:  # two short lines: the figure is a third of the page wide
        sub = (f"outlined: the kept {share[1]:.0%} of the points,</sup><br><sup>"
               f"holding {share[0]:.0%} of the attribution")
    fig.update_layout(
        title={"text": f"{html.escape(title)}<br><sup>{sub}</sup>"},
        xaxis={"title": {"text": "column" if face else "time cell"}, "range": [-0.5, gw - 0.5],
               "showgrid": False, "constrain": "domain"},
        yaxis={"title": {"text": "row" if face else "mel cell (low at the bottom)"},
               "range": [gh - 0.5, -0.5], "showgrid": False, "constrain": "domain",
               **({"scaleanchor": "x"} if face else {"showticklabels": False})},
        height=480, margin={"l": 40, "r": 5, "t": 90, "b": 45},
    )
    return fig
