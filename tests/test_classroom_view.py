"""The classroom view: record → large emotion, kept words and speech, one sentence; and the one
meaning of "kept" (ser_core.kept) it shares with Analyze."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from ser_core import kept
from ser_core.trace import AttentionRecord, AxisLabels

REPO = Path(__file__).resolve().parent.parent
CHECKPOINT = REPO / "checkpoints" / "ks_transformer_demo.safetensors"


def _frames_record(keep: np.ndarray) -> AttentionRecord:
    n = keep.shape[1]
    starts = np.arange(n) * 0.02
    return AttentionRecord(
        name="ccab_t2a.0.cross", kind="key-sparse", query_modality="text", key_modality="audio",
        weights=np.full((keep.shape[0], 2, n), 1.0 / n, dtype=np.float32), keep=keep, keep_ratio=0.5,
        query_labels=AxisLabels("words", ["a", "b"]),
        key_labels=AxisLabels("frames", [f"{s:.2f}" for s in starts], start=starts, end=starts + 0.02))


def test_kept_means_kept_by_at_least_half_of_the_heads():
    keep = np.array([[1, 1, 0, 0, 1], [1, 0, 0, 1, 1], [0, 1, 0, 0, 1], [1, 0, 0, 0, 0]], dtype=bool)
    assert kept.kept_by_most_heads(_frames_record(keep)).tolist() == [True, True, False, False, True]


def test_kept_spans_merge_touching_frames():
    keep = np.array([[1, 1, 0, 0, 1]], dtype=bool)
    spans = kept.kept_spans(_frames_record(keep))
    assert np.allclose(spans, [(0.0, 0.04), (0.08, 0.10)])
    assert kept.kept_spans(None) is None


def test_explanation_names_the_emotion_the_kept_words_and_time():
    summary = kept.KeptSummary(["livid", "exam"], 6, 1.8, 2.8, "ccab_t2a.0.cross", "ccab_a2t.0.cross")
    text = kept.explanation("angry", 0.71, summary)
    assert text.startswith("The model hears angry (71% sure)")
    assert "2 of its 6 words (“livid”, “exam”)" in text and "1.8 s of the 2.8 s" in text
    bare = kept.explanation("sad", 0.5, kept.KeptSummary([], 0, None, 1.0, None, None))
    assert bare == "The model hears sad (50% sure)."


@pytest.mark.skipif(not CHECKPOINT.exists(), reason="shipped checkpoint missing")
def test_classroom_page_from_recording_to_result():
    at = AppTest.from_file(str(REPO / "pages" / "0_Classroom.py"), default_timeout=120).run()
    assert not at.exception
    assert not at.get("plotly_chart")  # nothing analysed yet
    wav = sorted((REPO / "samples" / "wav").glob("*.wav"))[0].read_bytes()
    at.audio_input(key="classroom_record").upload("recording.wav", wav).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    html = "\n".join(str(m.value) for m in at.markdown)
    assert "classroom-emotion" in html and "sure" in html
    assert "The model hears" in html and "to decide, it kept" in html
    assert len(at.get("plotly_chart")) == 1
    assert len(at.slider) == 1  # the one setting: keep_ratio
    at.slider[0].set_value(0.2).run()
    assert not at.exception
    assert "The model hears" in "\n".join(str(m.value) for m in at.markdown)


@pytest.mark.skipif(not CHECKPOINT.exists(), reason="shipped checkpoint missing")
def test_classroom_page_says_why_for_a_bad_recording():
    at = AppTest.from_file(str(REPO / "pages" / "0_Classroom.py"), default_timeout=120).run()
    at.audio_input(key="classroom_record").upload("recording.wav", b"RIFF\x00\x00not a wave").run()
    assert not at.exception
    assert at.error and "Traceback" not in at.error[0].value
    assert not at.get("plotly_chart")


@pytest.mark.skipif(not CHECKPOINT.exists(), reason="shipped checkpoint missing")
def test_every_view_agrees_on_what_was_kept():
    """Word chips, key bars, heatmap title, waveform and spectrogram strip: one meaning of kept."""
    from ser_core import viz
    from ser_core.pipeline import Analyzer

    wav = REPO / "samples" / "wav" / "demo_00384.wav"
    analysis = Analyzer(str(CHECKPOINT)).analyze(str(wav), transcript="We were all livid after the exam")
    sparse = [r for r in analysis.trace.records if r.keep is not None and r.keep.ndim == 2]
    assert sparse
    for record in sparse:
        chips = kept.kept_by_most_heads(record)
        _, bars = viz.head_key_scores(record, "mean")
        assert np.array_equal(chips, bars), record.name
        title = viz.attention_heatmap(record, "mean").layout.title.text
        assert f"{int(chips.sum())} of {len(chips)} keys kept" in title, (record.name, title)
        if record.key_labels.kind == "frames":
            spans = kept.kept_spans(record)
            assert spans == viz.kept_intervals(record, "mean")
            # the green strip under the waveform: one box per span, the same seconds in its words
            strip = viz.kept_strip_html(spans, analysis.features.duration, record.name)
            assert strip.count('title="kept ') == len(spans)
            duration = analysis.features.duration  # the first and last frames reach past the clip
            assert f"{sum(min(b, duration) - max(a, 0.0) for a, b in spans):.2f} s of" in strip
