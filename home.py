"""SER attention explorer — home page (the server is `app.py`: run ``streamlit run app.py``)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import streamlit as st  # noqa: E402

from ser_core import ui  # noqa: E402

ui.page_setup("Home")

st.title("SER attention explorer")
st.markdown(
    """
See **inside** multimodal speech emotion recognition models. Record or upload a sentence, get the
predicted emotion, and explore where the model looked: which **words** and which **speech frames**
its attention kept, how the audio and text attend to each other, and what changes when you make the
attention sparser.

The default model is the **KS-Transformer** (key-sparse attention keeps only the top-k keys by the
column sums of the attention matrix; cascaded cross-attention blocks fuse audio and text). It
tells four emotions apart: anger, happiness, neutral and sadness. Speech is transcribed by
Whisper tiny.en and encoded by its encoder; words are encoded by MiniLM — all on this machine.
"""
)

checkpoint = ui.checkpoint_picker()
summary = ui.training_summary(checkpoint)
if summary:
    st.success(summary)
note = ui.faithfulness_note(checkpoint)
if note:
    st.info(note)

c1, c2 = st.columns(2)
with c1:
    st.subheader("Analyze")
    st.write("Prediction, word and frame attention maps, key importance and kept frames.")
    st.page_link("pages/1_Analyze.py", label="Open Analyze")
with c2:
    st.subheader("Compare k")
    st.write("The same utterance at 2–4 keep ratios side by side, and probabilities over k.")
    st.page_link("pages/2_Compare_k.py", label="Open Compare k")

samples = ui.sample_clips()
if samples:
    st.subheader("Sample clips to start from")
    st.caption(
        "Synthetic voices from the demo corpus. Some say one emotion in words and another in the "
        "voice: the label follows the voice."
    )
    st.dataframe(
        [
            {"clip": r["path"], "voice emotion (label)": ui.label_name(r["label"]),
             "words say": ui.label_name(r["text_emotion"]) if r.get("text_emotion") else "",
             "transcript": r.get("transcript", "")}
            for r in samples
        ],
        hide_index=True,
        width="stretch",
    )
