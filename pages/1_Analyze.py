"""Analyze: one utterance → prediction, attention maps, key importance, kept frames, exports."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import streamlit as st  # noqa: E402

from ser_core import faithful_ahead, kept, knob_ahead, limits, ui, ui_audio, viz  # noqa: E402
from ser_core.deletion import AXIS_NAMES  # noqa: E402

ui.page_setup("Analyze")
st.title("Analyze an utterance")

checkpoint = ui.checkpoint_picker()
meta = ui.checkpoint_meta(checkpoint) if checkpoint else {}
sees_faces = ui.model_sees_faces(meta.get("model"))
requested = ui.requested_clip()  # e.g. a misclassified utterance opened from the Evaluate page
clip = ui.clip_picker("analyze", video=sees_faces)
transcript = st.text_input(
    "Transcript (optional)",
    key="analyze_transcript",
    help="Leave empty to use the sample's known transcript, or to let Whisper transcribe an upload or "
         "a recording; a typed transcript is aligned to the audio.",
)


def run(clip):
    try:
        # what the user typed wins; else a sample's (or a clip opened from Evaluate) known
        # transcript, as every other page uses it; else Whisper transcribes
        text = (transcript or "").strip() or clip.transcript
        st.session_state["analysis_words_from"] = (
            "your transcript (aligned)" if (transcript or "").strip()
            else "the clip's known transcript (aligned)" if clip.transcript else "Whisper ASR")
        # the spinner turns once this analysis runs; before, a still message gives its place in line
        analysis = ui.analyze_queued(checkpoint, clip.data, transcript=text, video=clip.video, name=clip.name)
        st.session_state["analysis"] = analysis
        st.session_state["analysis_clip"] = clip
    except Exception as exc:  # every failure becomes a message, never a traceback
        st.session_state.pop("analysis", None)
        ui.show_error(exc)


clicked = bool(checkpoint and clip) and st.button("Analyze", type="primary", key="analyze_button")
# The analysis's spinner, place in the line and messages live in one container made on every run:
# elements after it keep their places (an expander that moved would be drawn anew, closed).
run_area = st.container()
to_run = requested if checkpoint and requested is not None else clip if clicked else None
if to_run is not None:
    with run_area:
        run(to_run)

base = st.session_state.get("analysis")
if base is None:
    st.info("Pick a sample, upload a file or record a sentence, then press **Analyze**.")
    if clip is not None:
        ui_audio.show_preview(clip)
    st.stop()



# Everything below depends on the sliders and pickers of this part only: a fragment, so that a
# keep_ratio move re-runs (and the browser redraws) just this part, not the pickers and the sidebar.
@st.fragment
def explore():
    base = st.session_state["analysis"]
    shown_clip = st.session_state["analysis_clip"]
    if base.trace.model != meta.get("model"):
        st.info(f"This analysis was made with **{base.trace.model}**; press **Analyze** to run the "
                f"chosen checkpoint ({meta.get('model')}).")
    knob = ui.sparsity_knob(base, "analyze")
    analysis = knob_ahead.rerun_at(base, knob, "analyze")  # the next step computed ahead
    feats = analysis.features
    sees_text = base.analyzer is not None and base.analyzer.uses_text
    words = feats.words if sees_text else None

    left, right = st.columns([1, 2])
    with left:
        st.subheader(f"Prediction: {ui.label_name(analysis.predicted)}")
        st.caption(
            (f"**{shown_clip.name}** ({shown_clip.origin}) · " if shown_clip.origin else "")
            + f"confidence {analysis.confidence:.0%} · {feats.duration:.1f} s · "
            + (f"words from {st.session_state.get('analysis_words_from', 'Whisper ASR')}"
               if sees_text else f"{base.trace.model} hears the audio only (no words)")
            + (f" · sample labelled **{ui.label_name(shown_clip.label)}**" if shown_clip.label else "")
            + (f" · analysed in {base.timings['total']:.1f} s" if "total" in base.timings else "")
            + (" (its words and speech features were kept from an earlier run of this clip)"
               if base.features_reused else "")
        )
        # plain HTML bars: a plotly figure here cost the browser ~0.13 s on every keep_ratio move
        st.html(viz.probabilities_html(analysis.labels, analysis.probs, shown_clip.label))
        st.audio(shown_clip.data)
    with right:
        word_record = ui.first_record(analysis.trace, key_kind="words", sparse=True)
        if word_record is not None and words:
            scores, _ = viz.head_key_scores(word_record, "mean")
            st.markdown(f"**Words by key importance** in `{word_record.name}` "
                        "(shade = mean key score over heads; bold = kept by most heads)")
            st.html(viz.word_importance_html(feats.words, scores, kept.kept_by_most_heads(word_record)))
            if ui.words_in_context(base):
                st.caption("Each word's features are made from the whole sentence (the text encoder reads it in "
                           "context), so a kept word shows where this layer looked, not that only that word's "
                           "meaning was used. The deletion test below checks what removing words does.")
            else:
                st.caption("This model encodes each word on its own (not in its sentence), so a word's "
                           "features carry that word only: a kept word is one whose meaning this layer took "
                           "in. The deletion test below checks what removing words does.")
        elif sees_text and not feats.words:
            st.warning("No words were recognised in this clip: the text side sees a 'no words' token.")
        elif not sees_text:
            st.caption(f"Transcript (for reference; the model does not see it): “{feats.transcript}”")
        frame_record = ui.first_record(analysis.trace, key_kind="frames", sparse=True)
        ui_audio.show_waveform(feats, words, frame_record, key="waveform")

    st.divider()
    names = analysis.trace.names()
    if not names:  # FE2E: the dense baseline has no attention layer to look at
        st.info(f"{analysis.trace.model} has no attention layer (a dense baseline): nothing to map. "
                "Its cost per layer is below; compare it with MESM on the Sparse masks page.")
        ui.show_model_extras(analysis.trace)
        return
    c1, c2 = st.columns(2)
    layer = c1.selectbox("Attention layer", names, index=ui.default_layer_index(analysis.trace), key="analyze_layer")
    record = analysis.trace[layer]
    head_options = ["mean"] + list(range(record.heads))
    head = c2.selectbox("Head", head_options, format_func=lambda h: "mean of heads" if h == "mean" else f"head {h}",
                        key="analyze_head")

    # One view at a time: a keep_ratio move redraws only the view on screen (hidden tabs would all be
    # rebuilt and sent to the browser on every move).
    VIEWS = {
        "Attention map": "who attends to whom in this layer: queries down, keys across",
        "Key importance": "each key's score (the attention it receives, summed over queries)",
        "Spectrogram": "the sound's frequencies over time, with the kept frames marked",
        "Model internals": "what else the model learned or chose (fusion weights, cells)",
    }
    view = st.segmented_control("View", list(VIEWS), default="Attention map", key="analyze_view",
                                help="\n".join(f"**{k}**: {v}" for k, v in VIEWS.items())) or "Attention map"
    heatmap = None
    if view == "Attention map":
        heatmap = viz.attention_heatmap(record, head)
        st.caption(ui.record_caption(record))
        st.plotly_chart(heatmap, width="stretch", key="heatmap")
    elif view == "Key importance":
        if record.key_scores is None:
            st.info("This layer has no key scores.")
        else:
            st.plotly_chart(viz.key_importance_figure(record, head), width="stretch", key="keys")
    elif view == "Spectrogram":
        audio_record = record if record.key_labels.kind == "frames" and record.keep is not None else frame_record
        log_mel, times = ui.log_mel_for_display(feats.audio)
        st.plotly_chart(viz.spectrogram_figure(log_mel, times, words, record=audio_record,
                                               duration=feats.duration),
                        width="stretch", key="spectrogram")
        if audio_record is not None:
            st.caption(f"Kept frames from `{audio_record.name}` are marked on the green strip.")
    else:
        ui.show_model_extras(analysis.trace)

    with st.expander("Export this layer and the whole trace"):
        setting = "".join(f"_{k}{v:.2f}" for k, v in knob.items())
        stem = f"{shown_clip.name.rsplit('.', 1)[0]}_{layer}{setting}"
        e1, e2, e3 = st.columns(3)
        # Exports are built only when clicked (callables): never on the keep_ratio slider's path.
        e1.download_button("Attention map (PNG)", lambda: viz.figure_to_png(heatmap or viz.attention_heatmap(record, head)),
                           f"{stem}.png", "image/png", on_click="ignore")
        e2.download_button("This layer's weights and mask (CSV)", lambda: viz.record_to_csv(record, head),
                           f"{stem}.csv", "text/csv", on_click="ignore",
                           help=(f"This clip is longer than explanations accept, so its maps are kept at display "
                                 f"resolution: one row per block of {record.pool[0]} × {record.pool[1]} positions, "
                                 "with the largest weight in it." if record.pooled else None))
        e3.download_button("Every layer's key scores and keep masks (JSON)",
                           lambda: viz.trace_to_json(analysis.trace, with_weights=False),
                           f"{stem}_trace.json", "application/json", on_click="ignore")

    faithfulness_view(analysis, layer, feats)


def faithfulness_opened(analysis, layer):
    """The view was opened (or closed): once open, the test starts in the background, so that the
    press on "Run the deletion test" finds it under way or done (``ser_core.faithful_ahead``)."""
    st.session_state.pop("analyze_faithful_ahead", None)  # (it holds its analysis's maps)
    if st.session_state.get("analyze_faithful_open") and not st.session_state.get("analyze_faithful"):
        st.session_state["analyze_faithful_ahead"] = faithful_ahead.start(
            analysis, layer, ui.session_id(), ui.analysis_queue())


# The expander and what it holds, a fragment of their own: opening it, the toggle and the test re-run
# (and the browser redraws) only this part, not the maps above it.
@st.fragment
def faithfulness_view(analysis, layer, feats):
    with st.expander("Is this faithful? (deletion test)", key="analyze_faithful_open",
                     on_change=faithfulness_opened, args=(analysis, layer)):
        faithfulness_test(analysis, layer, feats)


def faithfulness_test(analysis, layer, feats):
    st.caption(
        "If this layer's attention shows what the model relies on, removing the words or speech frames "
        "it ranks highest should lower the prediction more than removing random ones. The test removes "
        "the top 10–50 % (as if they were padding) and runs the model again; it does the same for "
        "Integrated Gradients, gradient × input and attention rollout."
    )
    too_long = limits.too_long_to_explain(feats.duration)
    if too_long:
        st.info(too_long)
    elif st.toggle("Run the deletion test", key="analyze_faithful",
                   help="Re-runs the model about 50 times on the cached features: attention against random "
                        "first, then the gradient attributions (about 2 s in all on a 10 s clip). The "
                        "work starts when this view opens, so it may be done before you press."):
        sentence_box, curves_box, pending = st.empty(), st.empty(), st.empty()

        def show(test):
            sentence_box.markdown(test.sentence())
            tested = list(test.axes)
            with curves_box.container():
                for column, axis in zip(st.columns(max(len(tested), 1)), tested):
                    curves = {c.ranking: (c.shares, c.probs) for c in test.curves if c.axis == axis}
                    unit = AXIS_NAMES.get(test.axes[axis].kind, "speech frames")
                    column.plotly_chart(viz.deletion_curves_figure(curves, test.p_orig, test.emotion, unit,
                                                                   test.aopc(axis)),
                                        width="stretch", key=f"deletion_{axis}")

        # each step from the work started when the view opened, if it is for this analysis and layer
        # (waiting for the step under way), else in the shared line of analyses like an analysis
        ahead = st.session_state.get("analyze_faithful_ahead")
        ahead = ahead if ahead is not None and ahead.is_for(analysis, layer) else None

        def step(n, work):
            done = ahead.result(n) if ahead is not None else None
            return done if done is not None else ui.run_queued(work)

        try:
            # 1. attention against random: the sentence's answer, from a dozen model runs
            quick = step(1, lambda should_stop: faithful_ahead.quick_test(analysis, layer))
            # its sentence first; the curves once every ranking is in (drawing them twice took a
            # 2-core laptop's CPU from the test)
            if quick.attention_layers:
                sentence_box.markdown(quick.sentence())
                pending.caption("Integrated Gradients, gradient × input and attention rollout are being added…")
            else:
                pending.caption("Removing words and frames and re-running the model…")

            # 2. every ranking (the removals of step 1 are reused), and the words' IG scores. No
            # turning spinner: the caption above says what is coming, and an animation would take
            # CPU from the test when the browser runs on the same machine (a classroom laptop)
            deletion, ig_words = step(2, lambda should_stop: faithful_ahead.every_ranking(analysis, layer, should_stop))
        except Exception as exc:  # a message, never a traceback
            pending.empty()  # nothing is being added any more
            ui.show_error(exc)
        else:
            pending.empty()
            show(deletion)
            if ig_words is not None and len(ig_words) == len(feats.words):
                st.markdown("**Words by Integrated Gradients** (shade = how much the word raises the "
                            f"probability of {deletion.emotion}; words that lower it stay pale)")
                st.html(viz.word_importance_html(feats.words, ig_words))
            used = ", ".join(f"{a}: `{name}`" for a, name in deletion.attention_layers.items())
            st.caption(
                (f"Attention ranking from {used} (kept keys first, then by key score). " if used else
                 "This model's attention does not rank whole words or frames: no attention line. ")
                + "AOPC = mean drop of the probability over the five steps (higher = the ranking found "
                "what the model needs). Removed positions become padding in the model's input batch; "
                f"{quick.forward_items + deletion.forward_items} model runs in "
                f"{quick.seconds + deletion.seconds:.1f} s"
                + (f" (attention against random, shown first: {quick.forward_items} runs in {quick.seconds:.1f} s)."
                   if quick.attention_layers else ".")
            )


explore()
