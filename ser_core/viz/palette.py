"""Shared colours and size caps of every view.

Okabe–Ito colour-blind-safe palette; each emotion class keeps its colour in every figure
(:data:`CLASS_COLORS`: ang vermillion-red, hap orange-gold, neu grey, sad blue, ...). Kept keys
are bluish green, dropped keys grey and hatched. Labels outside :data:`CLASS_COLORS` get a stable
colour from :data:`EXTRA_COLORS` (:func:`class_color`).

The size caps keep big maps, spectrograms and waveforms responsive in the browser.
"""

from __future__ import annotations

import zlib

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
KEPT_OUTLINE = "#F0E442"  # kept face cells' outline: yellow, readable on a dark or a light face
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
