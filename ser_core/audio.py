"""Audio input: decode, validate, mix to mono, resample to 16 kHz float32.

``load_audio(source)`` is part of the outside API (see DESIGN.md). ``source`` is a path, bytes,
or a file-like object (Streamlit's ``UploadedFile`` / ``st.audio_input`` value). Every problem a
user can cause raises :class:`ser_core.errors.InputError` with a message written for them.

Decoding order: soundfile (libsndfile: WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...) first, then
PyAV (FFmpeg: M4A/AAC, WebM/Opus, MP4/MKV/AVI audio tracks, anything else FFmpeg reads).

Limits, checked as early as the format allows so that nothing hangs:

* size (``MAX_BYTES``, env ``SER_MAX_BYTES``) before anything is decoded;
* duration (``MAX_SECONDS``, env ``SER_MAX_SECONDS``) from the header where the format gives
  it, and again while decoding (decoding stops as soon as the limit is passed);
* a wall-clock deadline on decoding (``DECODE_TIMEOUT_S``);
* at least ``MIN_SAMPLES`` (0.1 s at 16 kHz) after resampling;
* finite samples only (NaN/inf → the file is damaged);
* not silent (peak below ``SILENCE_PEAK`` or RMS below ``SILENCE_RMS``).

Amplitude: integer formats come back in [-1, 1) from the decoders. Float files may exceed 1.
A small overshoot (peak ≤ ``CLIP_HEADROOM``, e.g. a float WAV at +1 dB, or the ringing of
resampling) is clipped to [-1, 1]; a larger one means the file uses another scale (e.g. floats
holding int16 values) and is divided by its peak instead, because clipping would flatten it
into a square wave. Quiet audio is never amplified.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np
import soundfile as sf
import soxr

from ser_core import limits
from ser_core.errors import InputError
from ser_core.limits import MAX_BYTES, MAX_SECONDS, too_big, too_long  # noqa: F401 (part of this module's API)

SAMPLE_RATE = 16000
MIN_SAMPLES = 1600  # 0.1 s at 16 kHz
SILENCE_PEAK = 1e-4
SILENCE_RMS = 1e-5
CLIP_HEADROOM = 2.0
DECODE_TIMEOUT_S = 30.0

SUPPORTED = "WAV, FLAC, OGG, MP3, M4A, WebM or MP4"

AudioSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Any]


# --------------------------------------------------------------------------------------------
# limits (their values and environment variables live in ser_core.limits)


def max_seconds_limit(max_seconds: float | None = None) -> float:
    """The duration limit in seconds: the argument, else env ``SER_MAX_SECONDS``, else 60."""
    return limits.max_seconds(max_seconds)


# --------------------------------------------------------------------------------------------
# reading the source into a path or bytes


@dataclass
class _Source:
    """A source reduced to a path on disk or bytes in memory, with a name for messages."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    @property
    def file_name(self) -> str | None:
        """The uploaded or opened file's name; None for a microphone recording."""
        return None if self.name == "the recording" else self.name

    def handle(self) -> str | io.BytesIO:
        """Something soundfile / PyAV can open (a fresh handle each call)."""
        return str(self.path) if self.path is not None else io.BytesIO(self.data or b"")


def _read_source(source: AudioSource, max_bytes: int | None) -> _Source:
    limit = limits.max_bytes(max_bytes)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"There is no file at {str(path)!r}.")
        if not path.is_file():
            raise InputError(f"{str(path)!r} is not a file.")
        size = path.stat().st_size
        if size == 0:
            raise InputError(f"The file {path.name!r} is empty (0 bytes).")
        if size > limit:
            raise too_big(size, limit, path.name)
        return _Source(name=path.name, path=path)

    name = "the recording"
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "getvalue") or hasattr(source, "read"):
        raw_name = getattr(source, "name", None)
        if isinstance(raw_name, str) and raw_name:
            name = os.path.basename(raw_name)
        size = getattr(source, "size", None)
        if isinstance(size, int) and size > limit:
            raise too_big(size, limit, name)
        if hasattr(source, "getvalue"):
            data = source.getvalue()
        else:
            data = source.read(limit + 1)  # bounded: never read more than one byte past the limit
        if isinstance(data, str):
            raise InputError(f"{name!r} is text, not audio.")
        data = bytes(data or b"")
    elif source is None:
        raise InputError("No recording was given.")
    else:
        raise InputError(
            f"Cannot read audio from a {type(source).__name__}; give a file path, bytes or an "
            "uploaded file."
        )
    if len(data) == 0:
        raise InputError(f"The file {name!r} is empty (0 bytes)." if name != "the recording"
                         else "The recording is empty (0 bytes).")
    src = _Source(name=name, data=data)
    if len(data) > limit:
        raise too_big(len(data), limit, src.file_name)
    return src


# --------------------------------------------------------------------------------------------
# decoders: each returns (samples [channels, n] float32, sample rate) or raises


class _NotDecodable(Exception):
    """This decoder cannot open the data (try the next one)."""


def _decode_soundfile(
    src: _Source, limit_s: float, start: float = 0.0, end: float | None = None
) -> tuple[np.ndarray, int]:
    try:
        f = sf.SoundFile(src.handle())
    except Exception as exc:  # LibsndfileError, RuntimeError, TypeError on odd data
        raise _NotDecodable(str(exc)) from None
    with f:
        sr = int(f.samplerate)
        if sr <= 0 or f.channels <= 0:
            raise _NotDecodable("no sample rate / channels")
        total = f.frames if f.frames is not None and f.frames >= 0 else None
        first = int(round(start * sr))
        if end is None:
            if total is not None and total / sr > limit_s:  # header says it is too long
                raise too_long(total / sr, limit_s, name=src.file_name)
            count = -1 if total is None else max(total - first, 0)
            # never read past the limit, even when the header lies
            cap = int(limit_s * sr) + 1
            count = cap if count < 0 else min(count, cap)
        else:
            count = int(round(end * sr)) - first
            if total is not None and first >= total:
                raise InputError(
                    f"The segment starts at {start:.2f} s but {src.name!r} is only "
                    f"{total / sr:.2f} s long."
                )
        try:
            if first:
                f.seek(first)
            data = f.read(frames=count, dtype="float32", always_2d=True)
        except Exception as exc:
            raise _NotDecodable(str(exc)) from None
    if end is None and data.shape[0] > limit_s * sr:
        raise too_long(data.shape[0] / sr, limit_s, at_least=True, name=src.file_name)
    return np.ascontiguousarray(data.T), sr


def _decode_pyav(
    src: _Source, limit_s: float, start: float = 0.0, end: float | None = None
) -> tuple[np.ndarray, int]:
    import av  # imported here: PyAV loads the FFmpeg libraries

    try:
        container = av.open(src.handle(), mode="r")
    except Exception as exc:  # av.error.InvalidDataError and friends
        raise _NotDecodable(str(exc)) from None
    deadline = time.monotonic() + DECODE_TIMEOUT_S
    with container:
        if not container.streams.audio:
            raise _NotDecodable("no audio track")
        stream = container.streams.audio[0]
        if end is None:
            seconds = None
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / 1_000_000  # AV_TIME_BASE
            if seconds is not None and seconds > limit_s:
                raise too_long(seconds, limit_s, name=src.file_name)
        elif start > 0 and stream.time_base is not None:
            try:
                # land ~0.5 s early: codecs with overlapping frames (AAC, Opus) need a warm-up
                container.seek(int(max(start - 0.5, 0.0) / stream.time_base), stream=stream,
                               backward=True)
            except Exception:
                container.seek(0)
        # planar float keeps the channel layout and rate: mixing and resampling happen later
        resampler = av.AudioResampler(format="fltp")
        chunks: list[np.ndarray] = []
        n = 0
        sr = 0
        stop_at = (end - start) if end is not None else limit_s

        def take(frame: Any) -> bool:
            """Keep a decoded frame; False once enough audio has been decoded."""
            nonlocal n, sr
            # format conversion only (same rate): output lines up with the input frame
            t0 = float(frame.time) if frame.time is not None else None
            for out in resampler.resample(frame):
                arr = out.to_ndarray().astype(np.float32, copy=False)
                sr = int(out.sample_rate)
                if end is not None and t0 is not None:
                    # drop what lies before `start` (seeking lands on an earlier key frame)
                    skip = int(round((start - t0) * sr))
                    t0 += arr.shape[1] / sr
                    if skip >= arr.shape[1]:
                        continue
                    if skip > 0:
                        arr = arr[:, skip:]
                chunks.append(arr)
                n += arr.shape[1]
            return not (sr and n > stop_at * sr)

        try:
            for frame in container.decode(stream):
                if not take(frame):
                    break
                if time.monotonic() > deadline:
                    raise InputError(
                        f"Decoding {src.name!r} took longer than {DECODE_TIMEOUT_S:g} s; "
                        f"convert it to WAV and try again."
                    )
        except InputError:
            raise
        except Exception as exc:  # a damaged packet: keep what was decoded before it
            if n == 0:
                raise _NotDecodable(str(exc)) from None
        try:
            for out in resampler.resample(None):  # flush
                chunks.append(out.to_ndarray().astype(np.float32, copy=False))
                n += chunks[-1].shape[1]
        except Exception:
            pass
    if n == 0 or sr <= 0:
        raise _NotDecodable("no audio frames")
    data = np.concatenate(chunks, axis=1)
    if end is None:
        if data.shape[1] > limit_s * sr:
            raise too_long(data.shape[1] / sr, limit_s, at_least=True, name=src.file_name)
    else:
        data = data[:, : int(round((end - start) * sr))]
    return data, sr


def _decode(src: _Source, limit_s: float, start: float = 0.0,
            end: float | None = None) -> tuple[np.ndarray, int]:
    for decoder in (_decode_soundfile, _decode_pyav):
        try:
            return decoder(src, limit_s, start, end)
        except _NotDecodable:
            continue
    what = f"The file {src.name!r}" if src.name != "the recording" else "The recording"
    raise InputError(
        f"{what} could not be read as audio: it is damaged, not an audio file, or has no "
        f"audio track. Use {SUPPORTED}."
    )


# --------------------------------------------------------------------------------------------
# validation and conversion


def _to_mono_16k(data: np.ndarray, sr: int, name: str) -> np.ndarray:
    """[channels, n] at ``sr`` → validated float32 mono at 16 kHz."""
    if data.size == 0 or data.shape[-1] == 0:
        raise InputError(f"{_what(name)} contains no audio samples.")
    if not np.isfinite(data).all():
        raise InputError(
            f"{_what(name)} contains invalid samples (NaN or infinity): the file is damaged."
        )
    mono = data.mean(axis=0, dtype=np.float64)  # average the channels
    if sr != SAMPLE_RATE:
        # soxr "HQ": 20-bit precision, linear-phase band-limited resampling
        mono = soxr.resample(mono, sr, SAMPLE_RATE, quality="HQ")
    mono = np.asarray(mono, dtype=np.float32)
    if mono.shape[0] < MIN_SAMPLES:
        raise InputError(
            f"{_what(name)} is only {data.shape[-1] / sr:.4g} s long; at least "
            f"{MIN_SAMPLES / SAMPLE_RATE:g} s of audio is needed."
        )
    peak = float(np.max(np.abs(mono)))
    if peak > CLIP_HEADROOM:
        mono = mono / peak  # another scale (e.g. floats holding int16 values): rescale
    elif peak > 1.0:
        np.clip(mono, -1.0, 1.0, out=mono)  # small overshoot of a float file / resampling
    rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
    if float(np.max(np.abs(mono))) < SILENCE_PEAK or rms < SILENCE_RMS:
        raise InputError(
            f"No sound was found in {_lower_what(name)}: it is silent. "
            "Check the microphone or the file."
        )
    return mono


def _what(name: str) -> str:
    """How a message names the audio: a microphone recording, or an uploaded file by its name."""
    return "The recording" if name == "the recording" else f"The file {name!r}"


def _lower_what(name: str) -> str:
    return "the recording" if name == "the recording" else f"the file {name!r}"


# --------------------------------------------------------------------------------------------
# public API


def load_audio(
    source: AudioSource, max_seconds: float | None = None, max_bytes: int | None = None
) -> np.ndarray:
    """Decode ``source`` (path, bytes or file-like) to float32 mono 16 kHz samples in [-1, 1].

    Raises :class:`InputError` for empty, undecodable, too large, too long (over
    ``max_seconds``, default ``SER_MAX_SECONDS`` or 60 s), too short (< 0.1 s), damaged
    (NaN/inf) or silent input.
    """
    limit_s = max_seconds_limit(max_seconds)
    src = _read_source(source, max_bytes)
    data, sr = _decode(src, limit_s)
    return _to_mono_16k(data, sr, src.name)


def load_audio_segment(
    source: AudioSource,
    start: float,
    end: float,
    max_seconds: float | None = None,
    max_bytes: int | None = None,
) -> np.ndarray:
    """Samples between ``start`` and ``end`` seconds of a longer file, float32 mono 16 kHz.

    For corpora that give utterance times inside long recordings (IEMOCAP dialog files,
    MELD mp4 clips: their audio track is decoded with PyAV). Only the segment must fit the
    duration limit; the file may be longer (and larger: the size limit defaults to 2 GB here).
    """
    if not (np.isfinite(start) and np.isfinite(end)) or start < 0 or end <= start:
        raise InputError(f"A segment needs 0 ≤ start < end; got start={start}, end={end}.")
    limit_s = max_seconds_limit(max_seconds)
    if end - start > limit_s:
        raise too_long(end - start, limit_s)
    src = _read_source(source, max_bytes if max_bytes is not None else 2 * 1024**3)
    data, sr = _decode(src, limit_s, start=float(start), end=float(end))
    return _to_mono_16k(data, sr, src.name)


def audio_duration(source: AudioSource, max_bytes: int | None = None) -> float:
    """Duration in seconds, from the header where the format gives it (else by decoding)."""
    src = _read_source(source, max_bytes)
    seconds = limits.header_seconds(src.path if src.path is not None else src.data)
    if seconds is not None:
        return seconds
    data, sr = _decode(src, float("inf"))  # no header duration: decode (size is bounded)
    return data.shape[1] / sr


def save_wav(path: str | os.PathLike, audio: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Write ``audio`` ([n] or [n, channels], float in [-1, 1]) as 16-bit PCM WAV, atomically.

    The file is written next to ``path`` under a temporary name and renamed over it, so a
    reader never sees half a file. Returns the path.
    """
    arr = np.asarray(audio)
    if arr.ndim not in (1, 2) or arr.shape[0] == 0:
        raise ValueError(f"audio must be [n] or [n, channels] with n > 0, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("audio contains NaN or infinity")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".wav", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, np.clip(arr.astype(np.float32), -1.0, 1.0), int(sr),
                 subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
