"""Exports: one record as CSV (long format), the whole trace as JSON, and any figure as PNG.

PNG export
    :func:`figure_to_png` draws the plotly figure's own data (heatmaps, bars, lines, images,
    shapes, annotations) with matplotlib's Agg backend. Kaleido 1.5.0 with Debian's chromium
    does work offline, but a one-shot ``fig.to_image`` took 3.1–4.3 s per call on this machine
    (0.4–0.7 s only with a persistent browser process kept alive), so PNGs are rendered with
    matplotlib instead: no browser, no extra package, ~0.1–0.5 s.
"""

from __future__ import annotations

import html
import io
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ser_core.errors import InputError
from ser_core.trace import AttentionRecord, AttentionTrace

from .records import Head, _any_pool_1d, _times, head_keep, head_weights

def record_to_csv(record: AttentionRecord, head: Head = "mean") -> str:
    """One row per (query, key): query, key, query_time, key_time, weight, kept (long format).

    Times are each position's start in seconds (empty where the axis has no times); ``kept``
    is the keep mask for that cell (True where the record drops nothing). A pooled record (a
    long clip's map at display resolution, ``AttentionRecord.pool``) gives one row per block:
    its first and last labels ("a…b"), its start time, the largest weight in it, and kept when
    any key in it is kept.
    """
    z = head_weights(record, head)
    tq, tk = z.shape
    bq, bk = record.pool
    keep = head_keep(record, head)
    if keep is None:
        kept = np.ones((tq, tk), dtype=bool)
    elif keep.over == "columns":
        kept = np.broadcast_to(_any_pool_1d(keep.mask, bk)[None, :], (tq, tk))
    else:
        kept = keep.mask
    q_names, q_t = _block_labels(record.query_labels, bq)
    k_names, k_t = _block_labels(record.key_labels, bk)
    frame = pd.DataFrame({
        "query": np.repeat(q_names, tk),
        "key": np.tile(k_names, tq),
        "query_time": np.repeat(q_t, tk),
        "key_time": np.tile(k_t, tq),
        "weight": z.reshape(-1),
        "kept": np.asarray(kept).reshape(-1),
    })
    return frame.to_csv(index=False, float_format="%.6g")


def _block_labels(labels, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Names and start times (NaN without times) of an axis's blocks of ``block`` positions. The
    first speech frame is centred on 0 s, so its span starts before the clip: shown as 0."""
    names = [str(n) for n in labels.names]
    groups = [(i, min(i + block, len(names)) - 1) for i in range(0, len(names), block)]
    times = _times(labels)
    return (np.array([names[a] if a == b else f"{names[a]}…{names[b]}" for a, b in groups], dtype=object),
            np.array([max(0.0, times[0][a]) if times is not None else np.nan for a, _ in groups]))


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
    if trace.yaxis == "y2":  # the heatmaps' hidden 0–1 axis over the whole map
        kw["transform"] = ax.get_xaxis_transform()
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
    if "text" in mode and trace.text is not None:  # words above the plot (clip_on off)
        size = (trace.textfont.size if trace.textfont and trace.textfont.size else 11) * 0.85
        va = "bottom" if (trace.textposition or "").startswith("top") else "center"
        for xx, yy, t in zip(x, y, np.broadcast_to(np.asarray(trace.text, dtype=object), x.shape)):
            ax.text(xx, yy, _plain(t), ha="center", va=va, fontsize=size, clip_on=False, zorder=4)
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


def _categories_at_positions(fig: go.Figure) -> go.Figure:
    """A copy whose category axes (the heatmaps' word axes) are numbers: each category at its
    index, where plotly draws it."""
    index = {}
    for letter in ("x", "y"):
        axis = fig.layout[f"{letter}axis"]
        if axis.type == "category" and axis.categoryarray is not None:
            index[letter] = {c: float(i) for i, c in enumerate(axis.categoryarray)}
    if not index:
        return fig
    fig = go.Figure(fig)
    for trace in fig.data:
        for letter, where in index.items():
            on_axis = (getattr(trace, f"{letter}axis", None) or letter) == letter
            if on_axis and getattr(trace, letter, None) is not None:
                trace[letter] = [where.get(v, v) for v in trace[letter]]
    for letter, where in index.items():
        axis = fig.layout[f"{letter}axis"]
        axis.type = "linear"
        if axis.tickvals is not None:
            axis.tickvals = [where.get(v, v) for v in axis.tickvals]
    return fig


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
    fig = _categories_at_positions(fig)
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
        above = fig.layout.annotations or any(
            isinstance(t, go.Scatter) and "text" in (t.mode or "") and t.cliponaxis is False for t in fig.data)
        ax.set_title(title, fontsize=11, loc="left", pad=24 if above else 8)
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
