"""Compare k: one utterance at 2–4 keep ratios side by side, and class probabilities over k."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402

from ser_core import ui, viz  # noqa: E402

st.set_page_config(page_title="Compare k · SER attention explorer", page_icon="⚖️", layout="wide")
st.title("Compare keep ratios")
st.caption(
    "Key-sparse attention keeps, in every key-sparse layer and head, the top ⌊k·L⌋ keys by their "
    "attention column sums and zeroes the rest. Move the sliders: only the model re-runs, on the "
    "features already computed for this clip."
)

checkpoint = ui.checkpoint_picker()
note = ui.faithfulness_note(checkpoint)
if note:
    st.info(note)
base = st.session_state.get("analysis")
with st.expander("Utterance", expanded=base is None):
    clip = ui.clip_picker("compare")
    if checkpoint and clip and st.button("Analyze this clip", type="primary", key="compare_button"):
        try:
            with st.spinner("Transcribing, encoding and running the model…"):
                base = ui.get_analyzer(checkpoint).analyze(clip.data, transcript=clip.transcript)
            st.session_state["analysis"] = base
            st.session_state["analysis_clip"] = clip
        except Exception as exc:
            ui.show_error(exc)
if base is None:
    st.info("Choose a clip above (or analyse one on the Analyze page) to compare keep ratios.")
    st.stop()

shown_clip = st.session_state["analysis_clip"]
st.markdown(f"**{shown_clip.name}** · “{base.features.transcript}”")

n_columns = st.radio("How many settings", [2, 3, 4], index=1, horizontal=True, key="compare_n")
defaults = [0.1, 0.5, 1.0, 0.3]
names = base.trace.names()
layer = st.selectbox("Layer shown in every column", names, index=ui.default_layer_index(base.trace),
                     key="compare_layer")

columns = st.columns(n_columns)
for i, col in enumerate(columns):
    with col:
        k = st.slider(f"keep_ratio {chr(65 + i)}", 0.05, 1.0, defaults[i], 0.05, key=f"compare_k{i}")
        result = base.rerun(keep_ratio=k)
        st.markdown(f"**{ui.label_name(result.predicted)}** · {result.confidence:.0%}")
        st.plotly_chart(viz.probabilities_figure(result.labels, result.probs), width="stretch",
                        key=f"compare_probs{i}")
        st.plotly_chart(viz.attention_heatmap(result.trace[layer], "mean"), width="stretch",
                        key=f"compare_map{i}")


@st.cache_data(show_spinner="Sweeping keep_ratio…", max_entries=16)
def sweep(_analysis, key: str) -> np.ndarray:
    """Class probabilities at keep_ratio 0.1 … 1.0 (cached per utterance and checkpoint)."""
    return np.stack([_analysis.rerun(keep_ratio=float(k)).probs for k in KS])


KS = np.round(np.arange(0.1, 1.01, 0.1), 2)
probs = sweep(base, f"{checkpoint}:{base.features.key}")
st.subheader("Class probabilities over keep_ratio")
st.plotly_chart(viz.probability_curve_figure(KS.tolist(), probs, base.labels), width="stretch",
                key="compare_curve")
