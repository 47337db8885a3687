"""Audio and transcript views: waveform and log-mel spectrogram with kept frames and words at
their times, and the transcript shaded by key score (HTML)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ser_core.asr import Word
from ser_core.errors import InputError
from ser_core.trace import AttentionRecord

from .palette import KEPT_COLOR, MAX_SPECTROGRAM_FRAMES, MAX_WAVEFORM_POINTS, SPECTROGRAM_COLORSCALE
from .records import Head, _check_record, _times, head_key_scores

def kept_intervals(record: AttentionRecord, head: Head = "mean") -> list[tuple[float, float]]:
    """Time spans [start, end] of the kept keys of an audio-key record (contiguous keys merged).

    For ``head='mean'`` a frame counts as kept if at least half of the heads keep it.
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


#: A word label's width as a share of the time axis, per character (11 px type, ~6 px a
#: character, on a plot area about 540 px wide, the Analyze page's column: ~90 characters
#: across). Used to keep labels from overlapping; a wider plot only leaves more room.
CHAR_SHARE = 1 / 90


def _word_rows(words: list[Word], span: float) -> list[int | None]:
    """The row (0 or 1) each word's label goes in, or None when it fits in neither: a label takes
    the first row where it clears the previous one (by its estimated width, ``CHAR_SHARE``), so
    neighbours never overlap; a long clip's dense words keep every other label or fewer."""
    ends = [-np.inf, -np.inf]
    rows: list[int | None] = []
    for w in words:
        half = (len(w.text) + 1) * CHAR_SHARE * span / 2
        mid = (w.start + w.end) / 2
        row = next((r for r in (0, 1) if mid - half >= ends[r]), None)
        if row is not None:
            ends[row] = mid + half
        rows.append(row)
    return rows


def _word_marks(words: list[Word], y_text: float, row_step: float, span: float) -> go.Scatter:
    """Each word above its time span, all in one text trace (a layout annotation per word cost
    the browser ~0.1 s more on every redraw of a 10 s clip), in two rows ``row_step`` apart so that
    neighbours do not overlap (``_word_rows``; a word with no room has no label, its hover stays).
    ``span``: the seconds the time axis shows."""
    rows = _word_rows(words, span)
    return go.Scatter(
        x=[(w.start + w.end) / 2 for w in words],
        y=[y_text + row_step * (r or 0) for r in rows],
        mode="text", text=[html.escape(w.text) if r is not None else "" for w, r in zip(words, rows)],
        textposition="top center",
        textfont={"size": 11, "color": "#222222"}, cliponaxis=False, showlegend=False, name="words",
        hovertext=[f"{html.escape(w.text)}: {w.start:.2f}–{w.end:.2f} s" for w in words], hoverinfo="text",
    )


def _word_lines(words: list[Word], lo: float, hi: float) -> go.Scatter:
    """A thin dotted line at each word's start, all in one trace."""
    x = [v for w in words for v in (w.start, w.start, None)]
    y = [v for _ in words for v in (lo, hi, None)]
    return go.Scatter(x=x, y=y, mode="lines", line={"color": "#555555", "width": 0.6, "dash": "dot"},
                      hoverinfo="skip", showlegend=False, name="word starts")


def _bands(spans: Sequence[tuple[float, float]], lo: float, hi: float, color: str, opacity: float,
           name: str, legend: bool = True) -> go.Scatter:
    """Time spans as filled rectangles from ``lo`` to ``hi``, all in one trace (one legend entry)."""
    x = [v for a, b in spans for v in (a, a, b, b, a, None)]
    y = [v for _ in spans for v in (lo, hi, hi, lo, lo, None)]
    return go.Scatter(x=x, y=y, mode="lines", fill="toself", fillcolor=color, opacity=opacity,
                      line={"width": 0}, hoverinfo="skip", name=name, showlegend=legend)


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
    lo, hi = -1.1 * peak, 1.1 * peak
    fig = go.Figure()
    if spans:  # drawn first: below the waveform
        fig.add_trace(_bands(spans, lo, hi, KEPT_COLOR, 0.3, span_name))
    if words_:
        fig.add_trace(_word_lines(words_, lo, hi))
    fig.add_trace(
        go.Scatter(
            x=x, y=y, mode="lines", line={"color": "#333333", "width": 1}, name="waveform",
            hovertemplate="%{x:.3f} s<br>%{y:.3f}<extra></extra>",
        )
    )
    row_step = 0.16 * (hi - lo)
    if words_:  # two rows of labels at the top, inside the axis range (text beyond it is not drawn)
        fig.add_trace(_word_marks(words_, y_text=hi, row_step=row_step, span=duration))
    title = "Waveform"
    if spans is not None:
        covered = sum(b - a for a, b in spans)
        title += f"<br><sup>green = {span_name} ({covered:.2f} s of {duration:.2f} s)</sup>"
    fig.update_layout(
        title={"text": title},
        xaxis={"title": {"text": "time (s)"}, "range": [0, duration]},
        yaxis={"title": {"text": "amplitude"}, "range": [lo, hi + 2.2 * row_step if words_ else hi],
               "tickvals": [round(v, 2) for v in np.linspace(-peak, peak, 5)]},
        showlegend=spans is not None,
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0},
        margin={"t": 110, "b": 80 if spans is not None else 45, **WAVEFORM_MARGIN},  # b: room for the legend
        height=340,
    )
    fig.update_yaxes(automargin=False)  # the plot area stays where kept_strip_html expects it
    return fig


#: Pixels between the waveform figure's edges and its plot area (fixed, not grown to fit labels):
#: :func:`kept_strip_html` draws its strip with the same margins, so both share one time axis.
WAVEFORM_MARGIN = {"l": 70, "r": 30}


def kept_strip_html(spans: Sequence[tuple[float, float]] | None, duration: float,
                    layer: str | None = None, height: int = 22) -> str:
    """The kept speech as a green strip on the waveform's time axis (HTML, drawn under a
    :func:`waveform_figure` made without ``kept``), with its share of the clip in words.

    A page's keep_ratio slider redraws this strip and leaves the waveform figure as it was: a
    plotly figure drawn anew cost the browser ~80 ms per move, the strip next to nothing.
    """
    if not duration or duration <= 0:
        raise InputError("The clip has no length, so nothing can be placed on its time axis.")
    spans = [(max(0.0, float(a)), min(float(duration), float(b))) for a, b in (spans or [])]
    spans = [(a, b) for a, b in spans if b > a]
    covered = sum(b - a for a, b in spans)
    boxes = "".join(
        f'<div title="kept {a:.2f}–{b:.2f} s" style="position:absolute; top:0; bottom:0; '
        f'left:{100 * a / duration:.3f}%; width:{100 * (b - a) / duration:.3f}%; '
        f'background:{KEPT_COLOR}"></div>'
        for a, b in spans)
    where = f" by most heads of <code>{html.escape(layer)}</code>" if layer else ""
    return (
        f'<div style="margin: 0 {WAVEFORM_MARGIN["r"]}px 0 {WAVEFORM_MARGIN["l"]}px">'
        f'<div style="position:relative"><span style="position:absolute; right:100%; padding-right:8px; '
        f'line-height:{int(height)}px; font-size:0.85em; color:#333">kept</span>'
        f'<div class="ser-kept-strip" style="position:relative; height:{int(height)}px; background:#e8e8e8; '
        f'border-radius:3px; overflow:hidden">{boxes}</div></div>'
        f'<div style="font-size:0.85em; color:#333; margin-top:4px">'
        f'<span style="color:{KEPT_COLOR}; font-weight:700">green</span> = speech kept{where}: '
        f'{covered:.2f} s of {duration:.2f} s</div></div>'
    )


def spectrogram_figure(
    log_mel: np.ndarray,
    frame_times: np.ndarray,
    words: Sequence[Word] | None = None,
    record: AttentionRecord | None = None,
    head: Head = "mean",
    kept: Sequence[tuple[float, float]] | None = None,
    duration: float | None = None,
) -> go.Figure:
    """Log-mel spectrogram [n_mels, T]; dropped frames dimmed, kept frames on a green strip.
    ``duration``: the clip's length in seconds, where the time axis ends (the waveform's); by
    default one frame step after the last frame."""
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
    t_start = float(times[0] - step / 2)
    t_end = float(duration) if duration and duration > 0 else float(times[-1] + step)

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
        dropped = [(a, b) for a, b in zip(edges[0::2], edges[1::2]) if b > a + 1e-9]
        if dropped:
            fig.add_trace(_bands(dropped, -0.5, n_mels - 0.5, "black", 0.45, "dropped frames (dimmed)"))
        if spans:
            fig.add_trace(_bands(spans, strip_lo, strip_hi, KEPT_COLOR, 1.0, span_name))
        covered = sum(b - a for a, b in spans)
        title += (f"<br><sup>green strip = {span_name} ({covered:.2f} s of {t_end:.2f} s); "
                  "dropped frames dimmed</sup>")
    fig.update_layout(
        title={"text": title},
        xaxis={"title": {"text": "time (s)"}, "range": [t_start, t_end]},
        yaxis={"title": {"text": "mel bin"},
               "range": [-0.5, strip_hi + (0.25 * n_mels if words_ else 1.0)]},
        margin={"t": 90},
        height=380,
        showlegend=False,
    )
    if words_:
        fig.add_trace(_word_marks(words_, y_text=strip_hi + 0.5, row_step=0.1 * n_mels,
                                  span=t_end - t_start))
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
