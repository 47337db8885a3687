"""The waveform with the kept speech, as the Analyze and Classroom pages show it.

The waveform figure does not depend on keep_ratio; the kept speech does. So the figure is drawn
without it (the same figure on every move: the browser leaves it as it is) and the kept speech is
a green HTML strip under it on the same time axis (``viz.kept_strip_html``), the one thing a
keep_ratio move redraws here.
"""

from __future__ import annotations

import hashlib

import streamlit as st

from . import kept, viz
from .session_memo import remembered


def show_waveform(features, words, frame_record, key: str, font_size: int | None = None) -> None:
    """The clip's waveform (words at their times) and, under it, the speech that most heads of
    ``frame_record`` keep (nothing when the model keeps every frame or has no such layer)."""

    def figure():
        fig = viz.waveform_figure(features.audio, 16000, words)
        if font_size:  # the axes' own sizes too: the app's plotly theme sets them apart from the font
            fig.update_layout(height=320, font={"size": font_size}, title_font_size=font_size)
            fig.update_xaxes(tickfont_size=font_size * 0.8, title_font_size=font_size * 0.8)
            fig.update_yaxes(tickfont_size=font_size * 0.8, title_font_size=font_size * 0.8)
        return fig

    shown = tuple(w.text for w in words or ())
    st.plotly_chart(remembered(f"waveform_{key}", (features.key, shown, font_size), figure, size=2),
                    width="stretch", key=key)
    spans = kept.kept_spans(frame_record)
    if spans is not None:
        strip = viz.kept_strip_html(spans, features.duration, frame_record.name, height=40 if font_size else 22)
        st.html(f'<div style="font-size:{font_size}px">{strip}</div>' if font_size else strip)


def show_preview(clip) -> None:
    """The picked clip's waveform before it is analysed: a silent, clipped or cut recording shows
    at once, before a wait. (It also has the browser load its figure code now, not after the first
    press of Analyze.) A file that cannot be read shows nothing here: Analyze says what is wrong."""
    from .audio import load_audio
    from .errors import InputError

    digest = hashlib.sha1(clip.data).hexdigest()
    try:
        audio = remembered("preview", digest, lambda: load_audio(clip.data), size=2)
    except InputError:
        return
    fig = viz.waveform_figure(audio, 16000)
    fig.update_layout(title={"text": f"{clip.name}: {audio.size / 16000:.1f} s (not analysed yet)"}, height=260)
    st.plotly_chart(fig, width="stretch", key="preview_waveform")
