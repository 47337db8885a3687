"""ASR (faster-whisper tiny.en) and forced alignment (pocketsphinx) on espeak-ng speech."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from ser_core import asr
from ser_core.asr import Word, align, transcribe, words_for
from ser_core.errors import InputError
from ser_core.paths import SAMPLES_DIR

SENTENCE = "I am really happy today"

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def _speak(directory, text: str, name: str = "f") -> np.ndarray:
    import librosa
    import soundfile as sf

    path = directory / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text], check=True, timeout=30)
    audio, sr = sf.read(path, dtype="float32")
    return librosa.resample(audio, orig_sr=sr, target_sr=16000, res_type="soxr_hq").astype(np.float32)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    return _speak(tmp_path_factory.mktemp("speech"), SENTENCE)


@pytest.fixture(scope="module")
def asr_words(clip) -> list[Word]:
    return transcribe(clip)


def _check_times(words: list[Word], duration: float) -> None:
    for w in words:
        assert 0.0 <= w.start < w.end <= duration + 1e-6, w
    for a, b in zip(words, words[1:]):
        assert a.start <= b.start and a.end <= b.end, (a, b)


def _norm(text: str) -> str:
    return text.lower().strip(".,!?")


def test_transcribe_words_and_times(clip, asr_words):
    assert [_norm(w.text) for w in asr_words] == SENTENCE.lower().split()
    _check_times(asr_words, len(clip) / 16000)
    assert all(0.0 <= w.probability <= 1.0 for w in asr_words)
    assert all(w.text == w.text.strip() and w.text[-1].isalnum() for w in asr_words)


def test_transcribe_silence_is_empty():
    assert transcribe(np.zeros(32000, np.float32)) == []
    faint = np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 1e-3
    assert transcribe(faint) == []
    assert transcribe(np.zeros(0, np.float32)) == []


def test_transcribe_bad_input():
    with pytest.raises(InputError, match="mono"):
        transcribe(np.zeros((2, 16000), np.float32))
    with pytest.raises(InputError, match="NaN"):
        transcribe(np.full(16000, np.nan, np.float32))
    with pytest.raises(InputError, match="Unknown Whisper model"):
        transcribe(np.zeros(16000, np.float32) + 0.1, model="huge")
    with pytest.raises(InputError, match="device"):
        transcribe(np.ones(16000, np.float32) * 0.1, device="tpu")


def test_align_matches_asr_times(clip, asr_words):
    typed = "I am REALLY happy today!"
    words = align(clip, typed)
    assert [w.text for w in words] == ["I", "am", "REALLY", "happy", "today"]  # user's spellings
    _check_times(words, len(clip) / 16000)
    assert all(w.probability > 0 for w in words)  # all in the dictionary: all aligned
    close = [abs(a.start - b.start) < 0.3 and abs(a.end - b.end) < 0.3 for a, b in zip(words, asr_words)]
    assert sum(close) >= 0.8 * len(words), list(zip(words, asr_words))


@needs_espeak
def test_align_out_of_vocabulary_word_gets_times(tmp_path):
    audio = _speak(tmp_path, "I am Zxqwv really happy")
    words = align(audio, "I am Zxqwv really happy")
    assert [w.text for w in words] == ["I", "am", "Zxqwv", "really", "happy"]
    _check_times(words, len(audio) / 16000)
    oov = words[2]
    assert oov.probability == 0.0  # interpolated, not aligned
    assert words[1].end <= oov.start and oov.end <= words[3].start
    assert oov.end - oov.start > 0.1  # it spans the time espeak spent on it


def test_align_numbers_and_punctuation(clip):
    words = align(clip, "I am -- really, 100% happy today.")
    assert [w.text for w in words] == ["I", "am", "really", "100", "happy", "today"]
    _check_times(words, len(clip) / 16000)


def test_align_never_raises_for_plain_english():
    silence = np.zeros(16000, np.float32)
    words = align(silence, "hello there my friend")
    assert [w.text for w in words] == ["hello", "there", "my", "friend"]
    _check_times(words, 1.0)
    noise = np.random.default_rng(1).standard_normal(4000).astype(np.float32) * 0.1
    words = align(noise, "this transcript is much longer than the quarter second of audio it has")
    assert len(words) == 13
    _check_times(words, 0.25)


def test_align_empty_and_bad():
    assert align(np.zeros(16000, np.float32), "") == []
    assert align(np.zeros(16000, np.float32), "  ... ") == []
    with pytest.raises(InputError):
        align(np.zeros(0, np.float32), "hello")


def test_fill_gaps_borrows_from_touching_neighbours():
    tokens = ["a", "bbb", "c"]
    times = [(0.0, 1.0, 0.9), None, (1.0, 2.0, 0.8)]  # no room between the neighbours
    words = asr._fill_gaps(tokens, times, 0.0, 2.0)
    _check_times(words, 2.0)
    assert words[1].start == pytest.approx(0.5) and words[1].end == pytest.approx(1.5)
    assert [w.probability for w in words] == [0.9, 0.0, 0.8]


def test_voiced_region():
    audio = np.zeros(48000, np.float32)
    audio[16000:32000] = np.sin(np.arange(16000) * 0.1) * 0.5
    lo, hi = asr._voiced_region(audio)
    assert 0.9 < lo <= 1.0 and 2.0 <= hi < 2.1


def test_words_for_dispatches(clip, asr_words):
    assert words_for(clip, "happy today") == align(clip, "happy today")
    assert [w.text for w in words_for(clip, "   ")] == [w.text for w in asr_words]


@pytest.mark.slow
def test_transcribe_whisper_base(clip):
    try:
        asr.whisper_model_dir("base")
    except InputError:
        pytest.skip("Whisper base packages not installed")
    words = transcribe(clip, model="base")
    assert [_norm(w.text) for w in words] == SENTENCE.lower().split()
    _check_times(words, len(clip) / 16000)


def test_whisper_decodes_the_same_words_every_time_and_stops_a_loop_early():
    """Temperature 0 without sampling fallback: one clip, one transcript. Sample demo_00037's
    synthetic voice makes Whisper loop ("go on, go on, ..."): the loop stops at max_tokens."""
    assert asr.max_tokens(2.0) == asr.EXTRA_TOKENS + 2 * asr.TOKENS_PER_SECOND
    assert asr.max_tokens(600.0) == asr.WINDOW_TOKENS  # per 30 s window, under Whisper's 448
    for name in ("demo_00037.wav", "demo_00048.wav"):
        audio, _ = sf.read(SAMPLES_DIR / "wav" / name, dtype="float32")
        first, second = transcribe(audio), transcribe(audio)
        assert [w.text for w in first] == [w.text for w in second]
        assert 0 < len(first) <= asr.max_tokens(len(audio) / asr.SAMPLE_RATE)


def test_a_server_can_run_transcriptions_side_by_side_with_one_thread_each():
    """What the app's server sets (ui._one_thread_per_analysis): faster-whisper with 1 thread per
    call and 2 calls at once; the words are the same as with the defaults."""
    audio, _ = sf.read(SAMPLES_DIR / "wav" / "demo_00154.wav", dtype="float32")
    usual = [w.text for w in transcribe(audio)]
    try:
        asr.use_threads(1, 2)
        assert asr._whisper("tiny.en", "cpu").model.num_workers == 2
        assert [w.text for w in transcribe(audio)] == usual
    finally:
        asr.use_threads(None)
    assert asr._whisper("tiny.en", "cpu").model.num_workers == 1
