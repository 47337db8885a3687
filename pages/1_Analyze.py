"""Analyze: one utterance → prediction, attention maps, key importance, kept frames, exports."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import streamlit as st  # noqa: E402

from ser_core import ui, viz  # noqa: E402

st.set_page_config(page_title="Analyze · SER attention explorer", page_icon="🔍", layout="wide")
st.title("Analyze an utterance")

checkpoint = ui.checkpoint_picker()
clip = ui.clip_picker("analyze")
transcript = st.text_input(
    "Transcript (optional)",
    key="analyze_transcript",
    help="Leave empty to let Whisper transcribe the speech; a typed transcript is aligned to the audio.",
)

if checkpoint and clip and st.button("Analyze", type="primary", key="analyze_button"):
    try:
        with st.spinner("Transcribing, encoding and running the model…"):
            analysis = ui.get_analyzer(checkpoint).analyze(clip.data, transcript=transcript or None)
        st.session_state["analysis"] = analysis
        st.session_state["analysis_clip"] = clip
    except Exception as exc:  # every failure becomes a message, never a traceback
        st.session_state.pop("analysis", None)
        ui.show_error(exc)

base = st.session_state.get("analysis")
if base is None:
    st.info("Pick a sample, upload a file or record a sentence, then press **Analyze**.")
    st.stop()

shown_clip = st.session_state["analysis_clip"]
default_k = ui.default_keep_ratio(base)
keep_ratio = st.slider(
    "keep_ratio (share of keys each key-sparse layer keeps)", 0.05, 1.0, default_k, 0.05,
    key="analyze_keep_ratio", help="1.0 is vanilla attention. Changing it re-runs only the model.",
)
analysis = base if abs(keep_ratio - default_k) < 1e-9 else base.rerun(keep_ratio=keep_ratio)
feats = analysis.features

left, right = st.columns([1, 2])
with left:
    st.subheader(f"Prediction: {ui.label_name(analysis.predicted)}")
    st.caption(
        f"confidence {analysis.confidence:.0%} · {feats.duration:.1f} s · words from "
        f"{'your transcript (aligned)' if feats.transcript_source == 'typed' else 'Whisper ASR'}"
        + (f" · sample labelled **{shown_clip.label}**" if shown_clip.label else "")
    )
    st.plotly_chart(viz.probabilities_figure(analysis.labels, analysis.probs, shown_clip.label),
                    width="stretch", key="probs")
    st.audio(shown_clip.data)
with right:
    word_record = ui.first_record(analysis.trace, key_kind="words", sparse=True)
    if word_record is not None and len(feats.words):
        scores, _ = viz.head_key_scores(word_record, "mean")
        st.markdown(f"**Words by key importance** in `{word_record.name}` "
                    "(shade = mean key score over heads; bold = kept by most heads)")
        st.html(viz.word_importance_html(feats.words, scores, ui.kept_by_most_heads(word_record)))
    elif not feats.words:
        st.warning("No words were recognised in this clip: the text side sees a 'no words' token.")
    frame_record = ui.first_record(analysis.trace, key_kind="frames", sparse=True)
    st.plotly_chart(viz.waveform_figure(feats.audio, 16000, feats.words,
                                        kept=ui.kept_intervals_by_most_heads(frame_record)),
                    width="stretch", key="waveform")
    if frame_record is not None:
        st.caption(f"Shaded: speech frames kept by most heads of `{frame_record.name}`.")

st.divider()
names = analysis.trace.names()
c1, c2 = st.columns(2)
layer = c1.selectbox("Attention layer", names, index=ui.default_layer_index(analysis.trace), key="analyze_layer")
record = analysis.trace[layer]
head_options = ["mean"] + list(range(record.heads))
head = c2.selectbox("Head", head_options, format_func=lambda h: "mean of heads" if h == "mean" else f"head {h}",
                    key="analyze_head")

tab_map, tab_keys, tab_spec, tab_export = st.tabs(
    ["Attention map", "Key importance", "Spectrogram", "Export"]
)
heatmap = viz.attention_heatmap(record, head)
with tab_map:
    st.caption(ui.record_caption(record))
    st.plotly_chart(heatmap, width="stretch", key="heatmap")
with tab_keys:
    if record.key_scores is None:
        st.info("This layer has no key scores.")
    else:
        st.plotly_chart(viz.key_importance_figure(record, head), width="stretch", key="keys")
with tab_spec:
    audio_record = record if record.key_labels.kind == "frames" and record.keep is not None else frame_record
    log_mel, times = ui.log_mel_for_display(feats.audio)
    st.plotly_chart(viz.spectrogram_figure(log_mel, times, feats.words, record=audio_record),
                    width="stretch", key="spectrogram")
    if audio_record is not None:
        st.caption(f"Kept frames from `{audio_record.name}` are marked on the green strip.")
with tab_export:
    stem = f"{shown_clip.name.rsplit('.', 1)[0]}_{layer}_k{keep_ratio:.2f}"
    e1, e2, e3 = st.columns(3)
    # Exports are built only when clicked (callables): never on the keep_ratio slider's path.
    e1.download_button("Attention map (PNG)", lambda: viz.figure_to_png(heatmap), f"{stem}.png",
                       "image/png", on_click="ignore")
    e2.download_button("This layer's weights and mask (CSV)", lambda: viz.record_to_csv(record, head),
                       f"{stem}.csv", "text/csv", on_click="ignore")
    e3.download_button("Every layer's key scores and keep masks (JSON)",
                       lambda: viz.trace_to_json(analysis.trace, with_weights=False),
                       f"{stem}_trace.json", "application/json", on_click="ignore")
