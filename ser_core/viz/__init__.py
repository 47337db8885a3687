"""Views: pure functions from an :class:`~ser_core.trace.AttentionTrace` to figures, tables, exports.

Every function here reads only the trace records (plus the waveform / spectrogram arrays and
the word list a page passes in), never model internals, so one set of views serves all four
papers. Figures are interactive plotly figures for ``st.plotly_chart``.

The parts (all names are re-exported here, so pages write ``viz.attention_heatmap(...)``):

``palette``
    Okabe–Ito class colours (:func:`class_color`), kept/dropped colours, colour scales and the
    size caps of large maps, spectrograms and waveforms.
``records``
    A record's weights, keep mask and key scores brought to one head; map axes (words are
    categorical, frames with times are a time axis in seconds); max-pooling of large maps.
``attention``
    Attention heatmaps, key-score bars with the top-k threshold, nucleus keep-mask overlays.
``audio``
    Waveform and log-mel spectrogram with kept frames and words at their times; the transcript
    shaded by key score (HTML).
``charts``
    Class probabilities (a figure, or HTML bars), probabilities vs keep_ratio / top_p, confusion
    matrix, plain bars.
``deletion``
    The deletion test's curves (one line per ranking, AOPC in the legend).
``export``
    One record as CSV, the trace as JSON, any of these figures as PNG (matplotlib, no browser).
"""

from __future__ import annotations

from .attention import (attention_heatmap, key_importance_figure, nucleus_overlay_figure,
                        point_attribution_figure)
from .audio import (kept_intervals, kept_strip_html, spectrogram_figure, waveform_figure,
                    word_importance_html)
from .charts import (
    bar_figure, confusion_matrix_figure, probabilities_figure, probabilities_html, probability_curve_figure,
)
from .deletion import RANKING_STYLES, RANKING_TITLES, deletion_curves_figure
from .export import figure_to_png, record_to_csv, trace_to_json
from .palette import (
    ACCENT_COLOR, ATTENTION_COLORSCALE, CLASS_COLORS, DROPPED_COLOR, EXTRA_COLORS, KEPT_COLOR,
    MAX_CELLS_PER_AXIS, MAX_SPECTROGRAM_FRAMES, MAX_WAVEFORM_POINTS, SPECTROGRAM_COLORSCALE,
    class_color,
)
from .records import (
    Head, KeepMask, head_keep, head_key_scores, head_weights, max_pool_2d, top_k_threshold,
)

__all__ = [
    "ACCENT_COLOR", "ATTENTION_COLORSCALE", "CLASS_COLORS", "DROPPED_COLOR", "EXTRA_COLORS",
    "Head", "KEPT_COLOR", "KeepMask", "MAX_CELLS_PER_AXIS", "MAX_SPECTROGRAM_FRAMES",
    "MAX_WAVEFORM_POINTS", "RANKING_STYLES", "RANKING_TITLES", "SPECTROGRAM_COLORSCALE",
    "attention_heatmap", "bar_figure", "class_color", "confusion_matrix_figure",
    "deletion_curves_figure", "figure_to_png", "head_keep", "head_key_scores", "head_weights",
    "key_importance_figure", "kept_intervals", "max_pool_2d", "nucleus_overlay_figure",
    "point_attribution_figure",
    "probabilities_figure", "probabilities_html", "probability_curve_figure", "record_to_csv", "spectrogram_figure",
    "top_k_threshold", "trace_to_json", "waveform_figure", "kept_strip_html", "word_importance_html",
]
