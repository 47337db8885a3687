"""How a trace's layers are shown on the pages: a layer's one-line caption, a model's learned
choices besides its attention maps, and the spectrograms the views draw (cached per clip)."""

from __future__ import annotations

import numpy as np
import streamlit as st


def show_model_extras(trace) -> None:
    """What a model learned or chose besides attention maps: dicts as bars, scalars as text
    (e.g. MFSN's α over fusion operations and its chosen level, ILT's fusion weights)."""
    from . import viz

    shown = False
    extras = dict(trace.extras)
    ops = extras.pop("operations", None)
    if ops is not None and "alpha" in extras:  # MFSN: softmax(α) over the fusion operations
        alpha = [float(a) for a in np.asarray(extras.pop("alpha")).reshape(-1)]
        st.plotly_chart(viz.bar_figure(ops, alpha, "Fusion cell: softmax(α) over operations",
                                       highlight=int(np.argmax(alpha)), value_title="weight"),
                        width="stretch", key="extra_alpha")
        shown = True
    layers = extras.pop("flops_layers", None)
    if layers is not None and "flops" in extras:  # MESM / FE2E: the CNN's cost per layer
        flops = np.asarray(extras.pop("flops"), dtype=float).reshape(-1)
        st.plotly_chart(viz.bar_figure(layers, flops / 1e6, f"Feature-extraction CNN: {flops.sum() / 1e9:.3f} GFLOPs",
                                       value_title="MFLOPs"), width="stretch", key="extra_flops")
        shown = True
    levels = extras.pop("level_names", None)
    if levels is not None and "chosen_level" in extras:
        st.markdown(f"**Choice cell level**: {levels[int(extras.pop('chosen_level'))]} "
                    "(chosen on validation UA)")
    for name, value in extras.items():
        if name in ("probs",) or name.startswith("_"):
            continue
        if isinstance(value, dict) and value and all(isinstance(v, (int, float)) for v in value.values()):
            names, values = list(value), [float(v) for v in value.values()]
            st.plotly_chart(viz.bar_figure(names, values, name.replace("_", " "),
                                           highlight=int(max(range(len(values)), key=values.__getitem__))),
                            width="stretch", key=f"extra_{name}")
            shown = True
        elif isinstance(value, (str, int, float, bool)):
            st.markdown(f"**{name.replace('_', ' ')}**: {value}")
            shown = True
    if not shown:
        st.caption("This model has no learned choices to show besides its attention maps.")


def record_caption(record, setting: bool = True) -> str:
    """What a layer attends from and to, in one line; with its keep_ratio when ``setting``."""
    what = {
        "self": "self-attention",
        "cross": "cross-modal attention",
        "key-sparse": "key-sparse attention",
        "nucleus": "nucleus-sampled attention",
    }.get(record.kind, record.kind)
    text = (f"`{record.name}`: {what}, {record.query_modality} queries (rows) over "
            f"{record.key_modality} keys (columns)")
    if record.keep is not None and record.keep_ratio is not None:
        text += (f"; keep_ratio {record.keep_ratio:.2f} — " if setting else "; ") + "dropped keys are hatched"
    return text


@st.cache_data(show_spinner=False, max_entries=8)
def mel_chunks_for_display(audio):
    """MESM's 400 ms log-mel chunks [n, 64, 32] for drawing kept points (once per clip)."""
    from .encoders.spectral import mel_chunks

    return mel_chunks(audio).chunks.numpy()


@st.cache_data(show_spinner=False, max_entries=32)
def log_mel_for_display(audio):
    """40-band log-mel (25 ms / 10 ms) for the spectrogram view, with frame times."""
    from .encoders.spectral import frame_times, log_mel

    spec = log_mel(audio).cpu().numpy()
    return spec, frame_times(spec.shape[1], 10)
