"""The speech check of the analysis path: too little speech, or no word Whisper is sure of,
gets a plain message instead of a prediction (asr.speech_seconds / require_speech /
require_asr_words, used by pipeline.Analyzer.analyze)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from ser_core import asr
from ser_core.asr import (
    MIN_SPEECH_SECONDS,
    MIN_WORD_PROBABILITY,
    Word,
    confident_words,
    frame_levels_db,
    require_asr_words,
    require_speech,
    speech_seconds,
)
from ser_core.errors import InputError

SR = 16_000
#: per burst: a 25 ms frame that overlaps a burst's edge counts, so each burst measures up to
#: about a frame (plus a hop) longer than it is
TOLERANCE_S = 0.03


def _noise(seconds: float, rms: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * rms).astype(np.float32)


def _bursts(lengths: list[float], amp: float = 0.2, gap: float = 0.4, floor_rms: float = 0.003) -> np.ndarray:
    """Tone bursts of the given lengths (220 Hz + harmonics, so voice-like in level only)
    separated by ``gap`` s, over a white-noise floor; 0.4 s of floor before and after."""
    parts = [np.zeros(int(0.4 * SR))]
    for length in lengths:
        t = np.arange(int(round(length * SR))) / SR
        parts.append(amp * (np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 440 * t)))
        parts.append(np.zeros(int(gap * SR)))
    x = np.concatenate(parts)
    return (x + _noise(len(x) / SR, floor_rms, seed=len(lengths))).astype(np.float32)


# --------------------------------------------------------------------------- the measure


def test_frame_levels_are_librosa_rms_frames():
    import librosa

    x = _bursts([0.3, 0.2])
    ours = frame_levels_db(x)
    rms = librosa.feature.rms(y=x, frame_length=asr.VAD_FRAME, hop_length=asr.VAD_HOP, center=False)[0]
    np.testing.assert_allclose(ours, 20 * np.log10(np.maximum(rms, 1e-6)), atol=1e-3)


@pytest.mark.parametrize("signal", [
    np.zeros(2 * SR, np.float32),                                  # digital silence
    _noise(2, 1e-4),                                               # dither
    _noise(2, 0.05),                                               # loud white noise
    (0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * SR) / SR)).astype(np.float32),  # a tone
    (0.08 * sum(np.sin(2 * np.pi * f * np.arange(2 * SR) / SR)      # a held chord
                for f in (261.63, 329.63, 392.0))).astype(np.float32),
], ids=["silence", "dither", "white-noise", "tone-440Hz", "chord"])
def test_steady_sounds_measure_no_speech(signal):
    assert speech_seconds(signal) == 0.0


@pytest.mark.parametrize("lengths", [[0.2], [0.3, 0.5], [1.0, 0.4, 0.2], [0.45]])
def test_tone_bursts_measure_their_length(lengths):
    assert speech_seconds(_bursts(lengths)) == pytest.approx(sum(lengths), abs=TOLERANCE_S * len(lengths))


def test_bursts_over_a_louder_noise_floor_still_measured():
    """Bursts 14 dB over a loud floor (-30 dBFS): the floor is the clip's own, not a fixed level."""
    x = _bursts([0.6], amp=0.2, floor_rms=0.03)
    assert speech_seconds(x) == pytest.approx(0.6, abs=TOLERANCE_S)


@pytest.mark.parametrize("gap, expected, segments", [(0.1, 0.3 + 0.1 + 0.3, 1), (0.15, 0.3 + 0.15 + 0.3, 1),
                                                     (0.3, 0.6, 2)])
def test_short_pauses_count_as_speech(gap, expected, segments):
    """Gaps up to SPEECH_GAP_SECONDS between speech frames are part of the utterance."""
    assert asr.SPEECH_GAP_SECONDS == 0.2
    measured = speech_seconds(_bursts([0.3, 0.3], gap=gap))
    assert measured == pytest.approx(expected, abs=TOLERANCE_S * segments)


def test_absolute_floor_ignores_faint_sound_in_digital_silence():
    """Far above a digital-silence floor, but below SPEECH_FLOOR_DBFS: not speech."""
    x = np.zeros(2 * SR, np.float32)
    t = np.arange(SR) / SR
    x[SR // 2: SR // 2 + SR] = 10 ** (-75 / 20) * np.sin(2 * np.pi * 220 * t)  # -78 dBFS RMS
    assert speech_seconds(x) == 0.0
    x[SR // 2: SR // 2 + SR] *= 10 ** (40 / 20)  # the same at -38 dBFS: speech
    assert speech_seconds(x) == pytest.approx(1.0, abs=TOLERANCE_S)


def test_clip_shorter_than_a_frame():
    assert speech_seconds(np.zeros(100, np.float32)) == 0.0
    assert 0.0 <= speech_seconds(_noise(0.01, 0.1)) <= 0.01
    assert speech_seconds(np.zeros(0, np.float32)) == 0.0


def test_require_speech_messages():
    assert require_speech(_bursts([0.3, 0.5])) == pytest.approx(0.8, abs=2 * TOLERANCE_S)
    messages = []
    for signal, what, expected in [
        (_bursts([0.2]), "this clip",
         "This clip has only 0.2 s of speech; the model needs at least half a second. "
         "Record a whole sentence."),
        (_bursts([0.45]), "this recording",  # 0.45 s is never shown as "0.5 s"
         "This recording has only 0.4 s of speech; the model needs at least half a second. "
         "Record a whole sentence."),
        (_bursts([0.2])[int(0.38 * SR): int(0.62 * SR)], "this clip",  # all of it speech
         "This clip is only 0.2 s long; the model needs at least half a second of speech. "
         "Record a whole sentence."),
        (np.zeros(2 * SR, np.float32), "this clip", "This clip has no speech that stands out"),
        ((0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * SR) / SR)).astype(np.float32), "this clip",
         "This clip has no speech that stands out from its background sound (it may be silence, "
         "noise or a steady tone)"),
    ]:
        with pytest.raises(InputError) as err:
            require_speech(signal, what=what)
        assert str(err.value).startswith(expected), str(err.value)
        messages.append(str(err.value))
    assert not any("SER_" in m or "$" in m or "env" in m.lower() for m in messages)


def test_min_speech_constant():
    assert MIN_SPEECH_SECONDS == 0.5
    assert 0.0 < MIN_WORD_PROBABILITY < 1.0


# --------------------------------------------------------------------------- ASR confidence


def _w(text: str, p: float, i: int = 0) -> Word:
    return Word(text, 0.3 * i, 0.3 * i + 0.25, p)


@pytest.mark.parametrize("words", [
    [],                                                       # Whisper heard nothing
    [_w("thank", 0.04), _w("you", MIN_WORD_PROBABILITY - 0.01, 1)],
    [_w("good", 0.09)],
    [_w("off", float("nan"))],
], ids=["no-words", "all-below", "one-junk-word", "nan"])
def test_asr_words_refused(words):
    assert confident_words(words) == []
    with pytest.raises(InputError) as err:
        require_asr_words(words)
    msg = str(err.value)
    assert msg.startswith("Whisper could not make out any words in this clip")
    assert "type what was said" in msg and "SER_" not in msg


@pytest.mark.parametrize("words", [
    [_w("say", 0.53), _w("the", 0.98, 1), _w("word", 0.99, 2), _w("chalk", 0.09, 3)],  # TESS-like
    [_w("you", 0.32), _w("amount", 0.67, 1), _w("of", 0.48, 2)],                      # weakest sample
    [_w("yes", MIN_WORD_PROBABILITY)],                                                # on the line
], ids=["tess-like", "synthetic-voice", "threshold"])
def test_asr_words_accepted(words):
    require_asr_words(words)
    assert all(w.probability >= MIN_WORD_PROBABILITY for w in confident_words(words))


def test_default_word_probability_counts_as_confident():
    """Word's probability defaults to 1.0 (words made without a score)."""
    require_asr_words([Word("hello", 0.0, 0.4)])


# --------------------------------------------------------------------------- through Analyzer


@pytest.fixture(scope="module")
def analyzer(cache):
    from ser_core.pipeline import Analyzer

    return Analyzer(device="cpu")


@pytest.fixture(scope="module")
def samples(repo_root):
    rows = {r["path"]: r for r in csv.DictReader(open(repo_root / "samples" / "manifest.csv"))}
    return repo_root / "samples", rows


def _sample(samples, name: str) -> tuple[np.ndarray, str]:
    from ser_core.audio import load_audio

    root, rows = samples
    return load_audio(root / "wav" / name), rows[f"wav/{name}"]["transcript"]


def test_analyze_refuses_a_fifth_of_a_second(analyzer, samples, monkeypatch):
    audio, transcript = _sample(samples, "demo_00037.wav")
    cut = audio[int(0.9 * SR): int(1.1 * SR)]  # "lonely": speech from end to end
    monkeypatch.setattr(analyzer.extractor, "extract",
                        lambda *a, **k: pytest.fail("the check must come before ASR and the encoders"))
    for text in (None, "lonely"):  # a typed transcript does not skip the minimum-speech check
        with pytest.raises(InputError) as err:
            analyzer.analyze(cut, transcript=text)
        assert str(err.value) == ("This clip is only 0.2 s long; the model needs at least half a "
                                  "second of speech. Record a whole sentence.")


def test_analyze_refuses_unsure_asr_but_not_a_typed_transcript(analyzer, samples, monkeypatch):
    audio, transcript = _sample(samples, "demo_00332.wav")
    junk = [Word("thank", 0.5, 0.7, 0.04), Word("you", 0.7, 0.9, 0.3)]
    monkeypatch.setattr(asr, "transcribe", lambda *a, **k: list(junk))
    with pytest.raises(InputError, match="Whisper could not make out any words"):
        analyzer.analyze(audio)
    analysis = analyzer.analyze(audio, transcript=transcript)  # the user told us the words
    assert analysis.features.transcript_source == "typed"
    assert analysis.probs.shape == (len(analyzer.labels),)


def test_normal_samples_still_analyse(analyzer, samples):
    audio, transcript = _sample(samples, "demo_00037.wav")
    analysis = analyzer.analyze(audio, transcript=transcript)
    assert analysis.features.transcript_source == "typed"
    assert abs(float(analysis.probs.sum()) - 1.0) < 1e-5
    assert [w.text for w in analysis.features.words] == transcript.split()
    audio, _ = _sample(samples, "demo_00183.wav")  # through Whisper: its words pass the rule
    analysis = analyzer.analyze(audio)
    assert analysis.features.transcript_source == "asr" and confident_words(analysis.features.words)
    assert abs(float(analysis.probs.sum()) - 1.0) < 1e-5
