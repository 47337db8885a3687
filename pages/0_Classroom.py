"""Classroom: record or upload one sentence, see the emotion large, the words and the speech the
model kept, and one sentence of explanation. What a teacher projects; one slider, nothing else."""

import hashlib
import html
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import streamlit as st  # noqa: E402

from ser_core import kept, knob_ahead, ui, ui_audio, viz  # noqa: E402

ui.page_setup("Classroom")
# large type, high contrast: readable from the back of a room
st.html("""<style>
.classroom-emotion {font-size: 5rem; font-weight: 800; line-height: 1.1; color: #000;}
.classroom-sure {font-size: 1.8rem; color: #222;}
.classroom-words {font-size: 2.2rem; line-height: 1.6; color: #000;}
.classroom-words b, .classroom-words strong {color: #000;}
.classroom-explain {font-size: 1.7rem; line-height: 1.4; color: #000;}
[data-testid="stAudioInput"] {transform-origin: left top;}
</style>""")
st.title("Classroom")

checkpoint = ui.default_checkpoint()
if checkpoint is None:
    st.error("The default model is missing from this installation: reinstall the app, or use the "
             "Analyze page with another model.")
    st.stop()

record_col, upload_col = st.columns([3, 2])
recorded = record_col.audio_input("Press the microphone and say one sentence", key="classroom_record")
uploaded = upload_col.file_uploader("…or upload a file", key="classroom_upload",
                                    type=["wav", "flac", "ogg", "mp3", "m4a", "webm", "mp4"])
source = recorded or uploaded
if source is None:
    st.markdown('<div class="classroom-explain">Say a sentence with an emotion in your voice: '
                'angry, happy, sad, or neutral.</div>', unsafe_allow_html=True)
    st.stop()

data = source.getvalue()
digest = hashlib.sha1(data).hexdigest()
if st.session_state.get("classroom_digest") != digest:  # a new clip: analyse it once
    st.session_state.pop("classroom_analysis", None)
    try:
        st.session_state["classroom_analysis"] = ui.analyze_queued(
            checkpoint, data, name=None if source is recorded else source.name,
            spinner="Listening: transcribing, encoding and running the model…")
    except Exception as exc:  # a message in plain words, never a traceback
        ui.show_error(exc)
    st.session_state["classroom_digest"] = digest
base = st.session_state.get("classroom_analysis")
if base is None:
    st.stop()

knob = ui.sparsity_knob(base, "classroom")
analysis = knob_ahead.rerun_at(base, knob, "classroom")  # the next step computed ahead
summary = kept.kept_summary(analysis)
emotion = ui.label_name(analysis.predicted)

left, right = st.columns([2, 3])
left.markdown(f'<div class="classroom-emotion">{emotion.capitalize()}</div>'
              f'<div class="classroom-sure">{analysis.confidence:.0%} sure</div>', unsafe_allow_html=True)
right.markdown(f'<div class="classroom-explain">{html.escape(kept.explanation(emotion, analysis.confidence, summary))}</div>',
               unsafe_allow_html=True)

word_record = kept.first_sparse_record(analysis.trace, "words")
words = analysis.features.words
if word_record is not None and words:
    scores, _ = viz.head_key_scores(word_record, "mean")
    st.markdown('<div class="classroom-words">'
                + viz.word_importance_html(words, scores, kept.kept_by_most_heads(word_record))
                + "</div>", unsafe_allow_html=True)
frame_record = kept.first_sparse_record(analysis.trace, "frames")
ui_audio.show_waveform(analysis.features, words, frame_record, key="classroom_waveform", font_size=20)
st.caption("Green: the sound the model kept to decide. Move the slider to keep less or more.")
