"""Compare k: one utterance at 2–4 keep ratios (or top_p values, for nucleus-sampling models)
side by side, and class probabilities over the whole range."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402

from types import SimpleNamespace  # noqa: E402

from ser_core import ui, viz  # noqa: E402
from ser_core.session_memo import remembered  # noqa: E402

ui.page_setup("Compare k")
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
    clip = ui.clip_picker("compare", video=ui.model_sees_faces(
        ui.checkpoint_meta(checkpoint).get("model") if checkpoint else None))
    if checkpoint and clip and st.button("Analyze this clip", type="primary", key="compare_button"):
        try:
            base = ui.analyze_queued(checkpoint, clip.data, transcript=clip.transcript, video=clip.video,
                                     name=clip.name)
            st.session_state["analysis"] = base
            st.session_state["analysis_clip"] = clip
        except Exception as exc:
            ui.show_error(exc)
if base is None:
    st.info("Choose a clip above (or analyse one on the Analyze page) to compare keep ratios.")
    st.stop()

shown_clip = st.session_state["analysis_clip"]
st.markdown(f"**{shown_clip.name}** · “{base.features.transcript}” · {base.trace.model}")
if any(r.keep_ratio is not None for r in base.trace.records):
    knob = "keep_ratio"
elif any(r.top_p is not None for r in base.trace.records):
    knob = "top_p"
    st.caption("This model selects points by nucleus sampling: the setting compared is top_p, the "
               "share of attention mass each cross-modal attention layer keeps.")
else:
    st.info(f"{base.trace.model} has no sparsity setting to compare (no key-sparse or nucleus layer). "
            "Choose a KS-Transformer or MESM checkpoint.")
    st.stop()

trained = ui.models_trained_at_other_k(checkpoint) if knob == "keep_ratio" else []
by_training = bool(trained) and st.toggle(
    "Models trained at different k", key="compare_by_training",
    help="Each column picks a KS-Transformer trained (fine-tuned) at its own keep ratio and runs it "
         "at a keep ratio you choose: does a model trained sparse use sparse attention better?")
n_columns = st.radio("How many columns", [2, 3, 4], index=1, horizontal=True, key="compare_n")
defaults = [0.1, 0.5, 1.0, 0.3]
names = base.trace.names()
layer = st.selectbox("Layer shown in every column", names, index=ui.default_layer_index(base.trace),
                     key="compare_layer")
st.caption(ui.record_caption(base.trace[layer], setting=False))  # each column has its own k


MAX_KEPT_BYTES = 16 * 2**20  # a remembered column's map at most (a long clip's fusion map: 100s of MB)


def column_result(path: str | None, k: float):
    """The model of ``path`` (None: the analysis's own) at this k: the prediction and the shown
    layer only, remembered, so that a move of one column's slider re-runs only that column."""
    key = (base.features.key, path or str(base.analyzer.checkpoint), knob, k, layer)

    def run():
        result = ui.run_checkpoint_on(path, base, keep_ratio=k) if path else base.rerun(**{knob: k})
        return SimpleNamespace(key=key, predicted=result.predicted, confidence=result.confidence,
                               labels=result.labels, probs=result.probs, record=result.trace[layer])
    return remembered("compare_k", key, run, size=8, keep=lambda r: r.record.weights.nbytes <= MAX_KEPT_BYTES)


columns = st.columns(n_columns)
results = []
for i, col in enumerate(columns):
    with col:
        if by_training:
            choice = st.selectbox("Model", range(len(trained)), index=min(i, len(trained) - 1),
                                  format_func=lambda j: f"trained at k = {trained[j][1]:.2f}",
                                  key=f"compare_model{i}")
            path, trained_k = trained[choice]
            k = st.slider(f"run at {knob}", 0.05, 1.0, float(trained_k), 0.05, key=f"compare_run{i}_{choice}")
            results.append(column_result(path, k))
        else:
            k = st.slider(f"{knob} {chr(65 + i)}", 0.05, 1.0, defaults[i], 0.05, key=f"compare_k{i}")
            results.append(column_result(None, k))
top = max(float(np.max(r.record.weights)) for r in results)  # one colour scale for the row
for i, (col, result) in enumerate(zip(columns, results)):
    with col:
        st.markdown(f"**{ui.label_name(result.predicted)}** · {result.confidence:.0%}")
        probs_fig, map_fig = remembered(
            "compare_k_figures", (result.key, top, n_columns > 2),
            lambda: (viz.probabilities_figure(result.labels, result.probs),
                     viz.attention_heatmap(result.record, "mean", zmax=top, compact=n_columns > 2)), size=8)
        st.plotly_chart(probs_fig, width="stretch", key=f"compare_probs{i}")
        st.plotly_chart(map_fig, width="stretch", key=f"compare_map{i}")


@st.cache_data(show_spinner="Sweeping the setting…", max_entries=16)
def sweep(_analysis, knob: str, key: str) -> np.ndarray:
    """Class probabilities at knob = 0.1 … 1.0 (cached per utterance, checkpoint and knob)."""
    return np.stack([_analysis.rerun(**{knob: float(k)}).probs for k in KS])


KS = np.round(np.arange(0.1, 1.01, 0.1), 2)
probs = sweep(base, knob, f"{checkpoint}:{base.trace.model}:{base.features.key}")
st.subheader(f"Class probabilities over {knob}")
st.plotly_chart(viz.probability_curve_figure(KS.tolist(), probs, base.labels, x_title=knob),
                width="stretch", key="compare_curve")
