"""ser_core.audio: bad input gives a clear InputError quickly; good input gives 16 kHz mono."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser_core.audio import (
    MAX_SECONDS,
    SAMPLE_RATE,
    audio_duration,
    load_audio,
    load_audio_segment,
    save_wav,
)
from ser_core.errors import InputError

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed")


def chirp(seconds: float, sr: int, channels: int = 1, f0: float = 150.0, f1: float = 900.0):
    """A rising sine sweep (not periodic, so a shift in time shows up), [n, channels]."""
    t = np.arange(int(round(seconds * sr))) / sr
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    out = np.stack([0.5 * np.sin(phase + c) for c in range(channels)], axis=1)
    return out.astype(np.float32)


def ffmpeg_encode(src: Path, dst: Path, *args: str) -> Path:
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), *args, str(dst)],
        check=True,
        timeout=60,
    )
    return dst


def check_good(audio: np.ndarray, seconds: float, tol_s: float = 0.05) -> None:
    assert isinstance(audio, np.ndarray)
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert np.isfinite(audio).all()
    assert np.abs(audio).max() <= 1.0
    assert abs(audio.shape[0] / SAMPLE_RATE - seconds) < tol_s, audio.shape


def expect_input_error(source, *words: str, **kwargs) -> str:
    """Loading ``source`` raises InputError (nothing else), quickly, with the given words."""
    t0 = time.perf_counter()
    with pytest.raises(InputError) as info:
        load_audio(source, **kwargs)
    elapsed = time.perf_counter() - t0
    assert type(info.value) is InputError
    message = str(info.value)
    assert elapsed < 5.0, f"took {elapsed:.1f} s to reject"
    for word in words:
        assert word.lower() in message.lower(), message
    assert "Traceback" not in message and "Errno" not in message, message
    return message


# ---------------------------------------------------------------------------------- bad input


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    expect_input_error(path, "empty")
    expect_input_error(b"", "empty")
    expect_input_error(io.BytesIO(b""), "empty")


def test_random_bytes_named_wav(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    expect_input_error(path, "could not be read as audio", "noise.wav")


def test_truncated_wav_header(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, chirp(1.0, 16000), 16000, subtype="PCM_16")
    path = tmp_path / "truncated.wav"
    path.write_bytes(good.read_bytes()[:30])  # RIFF/WAVE/fmt cut in the middle of the fmt chunk
    expect_input_error(path, "could not be read as audio")


def test_one_sample_wav(tmp_path):
    path = tmp_path / "one.wav"
    sf.write(path, np.array([0.5], dtype=np.float32), 16000, subtype="PCM_16")
    expect_input_error(path, "long", "at least 0.1 s")


def test_ten_minute_wav_rejected_from_header(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(600 * 8000, dtype=np.int16), 8000, subtype="PCM_16")
    t0 = time.perf_counter()
    message = expect_input_error(path, "600.0 s long", "limit is 60 s", "Cut it to 60 s or less")
    assert "SER_" not in message  # a teacher's message: no environment variable
    assert time.perf_counter() - t0 < 1.0  # rejected from the header, not after decoding
    assert message.startswith("The file 'long.wav' is 600.0 s long; the limit is 60 s.")  # a file, by name
    recorded = expect_input_error(path.read_bytes(), "600.0 s long")  # bytes from the microphone
    assert recorded.startswith("The recording is 600.0 s long") and "record again" in recorded


def test_an_uploaded_file_is_called_a_file_and_a_recording_a_recording(tmp_path):
    from ser_core import limits

    upload = io.BytesIO(b"")
    upload.name = "lecture.mp3"
    assert "The file 'lecture.mp3' is empty" in expect_input_error(upload)
    assert "The recording is empty" in expect_input_error(b"")
    silent = tmp_path / "quiet.wav"
    sf.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    assert "No sound was found in the file 'quiet.wav'" in expect_input_error(silent)
    with pytest.raises(InputError, match="^The file 'big.wav' is"):
        limits.check_upload(b"\0" * (limits.max_bytes() + 1), name="big.wav")


def test_duration_limit_argument_and_env(tmp_path, monkeypatch):
    path = tmp_path / "five.wav"
    sf.write(path, chirp(5.0, 16000), 16000)
    expect_input_error(path, "5.0 s long", "limit is 2 s", max_seconds=2)
    monkeypatch.setenv("SER_MAX_SECONDS", "3")
    expect_input_error(path, "limit is 3 s")
    monkeypatch.setenv("SER_MAX_SECONDS", "120")
    check_good(load_audio(path), 5.0)
    monkeypatch.setenv("SER_MAX_SECONDS", "abc")
    expect_input_error(path, "SER_MAX_SECONDS")


def test_size_limit_checked_before_decoding(tmp_path):
    path = tmp_path / "big.wav"
    sf.write(path, chirp(2.0, 16000), 16000)
    expect_input_error(path, "limit is", max_bytes=1000)
    expect_input_error(path.read_bytes(), "limit is", max_bytes=1000)
    # a file-like object larger than the limit is not read past limit + 1 bytes
    expect_input_error(io.BufferedReader(io.BytesIO(path.read_bytes())), max_bytes=1000)


def test_96k_8_channel_is_valid_and_mixed(tmp_path):
    sr, seconds = 96000, 1.0
    t = np.arange(int(sr * seconds)) / sr
    # channel c carries a sine at 200 + 100 c Hz; the mono mix is their average
    channels = np.stack([0.4 * np.sin(2 * np.pi * (200 + 100 * c) * t) for c in range(8)], axis=1)
    path = tmp_path / "multi.wav"
    sf.write(path, channels.astype(np.float32), sr, subtype="FLOAT")
    audio = load_audio(path)
    check_good(audio, seconds, tol_s=1e-3)
    assert audio.shape[0] == SAMPLE_RATE
    t16 = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    expected = np.mean([0.4 * np.sin(2 * np.pi * (200 + 100 * c) * t16) for c in range(8)], axis=0)
    # away from the edges the resampled mix matches the analytic mix
    assert np.abs(audio[200:-200] - expected[200:-200]).max() < 1e-3


def test_nan_samples(tmp_path):
    x = chirp(1.0, 16000)[:, 0]
    x[1000:1010] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    expect_input_error(path, "NaN")
    x[1000:1010] = np.inf
    sf.write(path, x, 16000, subtype="FLOAT")
    expect_input_error(path, "infinity")


def test_pure_silence(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(32000, dtype=np.float32), 16000, subtype="PCM_16")
    expect_input_error(path, "no sound was found")
    # 16-bit dither-level noise (±1 LSB) is silence too
    dither = np.random.default_rng(0).integers(-1, 2, 32000).astype(np.int16)
    sf.write(path, dither, 16000, subtype="PCM_16")
    expect_input_error(path, "no sound was found")


def test_text_file_named_mp3(tmp_path):
    path = tmp_path / "notes.mp3"
    path.write_text("This is not audio. " * 200)
    expect_input_error(path, "could not be read as audio", "notes.mp3")


def test_wrong_source_types(tmp_path):
    expect_input_error(None, "no recording")
    expect_input_error(12345, "cannot read audio")
    expect_input_error(tmp_path / "missing.wav", "no file")
    expect_input_error(tmp_path, "not a file")


def test_video_without_audio_track(tmp_path):
    import cv2

    path = tmp_path / "silent_video.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 64))
    for i in range(10):
        writer.write(np.full((64, 64, 3), i * 20, np.uint8))
    writer.release()
    expect_input_error(path, "no audio track")


# --------------------------------------------------------------------------------- good input


@pytest.mark.parametrize("sr", [22050, 44100, 48000])
def test_stereo_wav_rates(tmp_path, sr):
    x = chirp(2.0, sr, channels=2)
    path = tmp_path / f"stereo_{sr}.wav"
    sf.write(path, x, sr, subtype="PCM_16")
    audio = load_audio(path)
    check_good(audio, 2.0, tol_s=1e-3)
    # compare with the analytic mono mix of the two channels at 16 kHz
    ref = chirp(2.0, SAMPLE_RATE, channels=2).mean(axis=1)
    assert np.abs(audio[400:-400] - ref[400:-400]).max() < 2e-3


def test_float_overshoot_is_clipped_and_other_scale_rescaled(tmp_path):
    x = chirp(1.0, 16000)[:, 0] * 2.4  # peak 1.2: a float file a little too hot
    path = tmp_path / "hot.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    audio = load_audio(path)
    assert np.abs(audio).max() == pytest.approx(1.0)
    assert np.mean(np.abs(audio) >= 0.999) > 0.2  # clipped (a sine at 1.2 is flat ~37%)
    np.testing.assert_allclose(audio, np.clip(x, -1, 1), atol=1e-6)
    y = chirp(1.0, 16000)[:, 0] * 65536  # floats holding int16-scale values
    sf.write(path, y, 16000, subtype="FLOAT")
    audio = load_audio(path)
    np.testing.assert_allclose(audio, y / np.abs(y).max(), atol=1e-6)  # rescaled, shape kept


@pytest.mark.parametrize("fmt,subtype", [("flac", "PCM_16"), ("ogg", "VORBIS")])
def test_flac_and_ogg(tmp_path, fmt, subtype):
    path = tmp_path / f"clip.{fmt}"
    sf.write(path, chirp(1.5, 44100, channels=2), 44100, subtype=subtype)
    check_good(load_audio(path), 1.5)
    assert audio_duration(path) == pytest.approx(1.5, abs=0.01)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """One 3 s 44.1 kHz stereo chirp encoded to mp3, m4a, webm and mp4 by ffmpeg."""
    if FFMPEG is None:
        pytest.skip("ffmpeg is not installed")
    root = tmp_path_factory.mktemp("encoded")
    wav = root / "clip.wav"
    sf.write(wav, chirp(3.0, 44100, channels=2), 44100, subtype="PCM_16")
    return {
        "wav": wav,
        "mp3": ffmpeg_encode(wav, root / "clip.mp3", "-c:a", "libmp3lame", "-b:a", "128k"),
        "m4a": ffmpeg_encode(wav, root / "clip.m4a", "-c:a", "aac"),
        "webm": ffmpeg_encode(wav, root / "clip.webm", "-c:a", "libopus"),
    }


@needs_ffmpeg
@pytest.mark.parametrize("fmt", ["mp3", "m4a", "webm"])
def test_compressed_formats(encoded, fmt):
    audio = load_audio(encoded[fmt])
    check_good(audio, 3.0)
    ref = load_audio(encoded["wav"])
    # a lossy codec keeps the waveform close (same timing, small error)
    n = min(len(ref), len(audio))
    err = np.sqrt(np.mean((audio[:n] - ref[:n]) ** 2)) / np.sqrt(np.mean(ref[:n] ** 2))
    assert err < 0.1, err
    assert audio_duration(encoded[fmt]) == pytest.approx(3.0, abs=0.05)


class FakeUploadedFile(io.BytesIO):
    """What Streamlit's file_uploader / audio_input returns: BytesIO with name, type, size."""

    def __init__(self, data: bytes, name: str, mime: str):
        super().__init__(data)
        self.name = name
        self.type = mime
        self.size = len(data)


@needs_ffmpeg
def test_bytes_bytesio_and_uploaded_file(encoded):
    for fmt in ("wav", "mp3", "webm"):
        data = encoded[fmt].read_bytes()
        from_path = load_audio(encoded[fmt])
        for source in (data, bytearray(data), io.BytesIO(data),
                       FakeUploadedFile(data, f"upload.{fmt}", f"audio/{fmt}")):
            audio = load_audio(source)
            check_good(audio, 3.0)
            np.testing.assert_array_equal(audio, from_path)


def test_uploaded_file_messages_use_its_name():
    upload = FakeUploadedFile(b"\x00\x01garbage" * 100, "my_voice.wav", "audio/wav")
    expect_input_error(upload, "my_voice.wav", "could not be read")


@needs_ffmpeg
def test_segment_of_mp4_audio_track(tmp_path):
    wav = tmp_path / "long.wav"
    sf.write(wav, chirp(6.0, 44100, channels=2), 44100, subtype="PCM_16")
    mp4 = tmp_path / "dialog.mp4"
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         "color=c=gray:s=64x64:d=6", "-i", str(wav), "-shortest", "-c:v", "mpeg4",
         "-c:a", "aac", str(mp4)],
        check=True, timeout=60,
    )
    full = load_audio(mp4)
    for path, ref in ((wav, load_audio(wav)), (mp4, full)):
        seg = load_audio_segment(path, 2.5, 4.0)
        check_good(seg, 1.5, tol_s=1e-3)
        i = int(2.5 * SAMPLE_RATE)
        # the segment is the same stretch of the recording (edges aside: resampled apart)
        assert np.abs(seg[200:-200] - ref[i + 200 : i + len(seg) - 200]).max() < 0.02
    with pytest.raises(InputError):
        load_audio_segment(wav, 4.0, 2.0)
    with pytest.raises(InputError, match="only"):
        load_audio_segment(wav, 10.0, 11.0)


def test_save_wav_round_trip(tmp_path):
    x = chirp(1.0, SAMPLE_RATE)[:, 0]
    path = save_wav(tmp_path / "sub" / "out.wav", x)
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    assert np.abs(load_audio(path) - x).max() < 1e-4
    assert [p.name for p in path.parent.iterdir()] == ["out.wav"]  # no temporary left behind


def test_default_limit_is_sixty_seconds():
    assert MAX_SECONDS == 60.0


def test_damaged_files_give_input_error_or_audio(tmp_path):
    """Truncated or partly overwritten files: either the readable part or an InputError."""
    wav = tmp_path / "clip.wav"
    sf.write(wav, chirp(2.0, 22050, channels=2), 22050, subtype="PCM_16")
    flac = tmp_path / "clip.flac"
    sf.write(flac, chirp(2.0, 22050, channels=2), 22050, subtype="PCM_16")
    rng = np.random.default_rng(0)
    blobs = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (1, 7, 44, 4096, 300_000)]
    for path in (wav, flac):
        data = path.read_bytes()
        blobs += [data[:cut] for cut in (4, 12, 44, 100, 1000)]
        for at in (0, 20, 60, len(data) // 2):
            damaged = bytearray(data)
            damaged[at : at + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
            blobs.append(bytes(damaged))
    for blob in blobs:
        t0 = time.perf_counter()
        try:
            audio = load_audio(blob)
        except InputError as exc:
            assert str(exc)
        else:
            check_good(audio, audio.shape[0] / SAMPLE_RATE)
            assert audio.shape[0] >= 1600
        assert time.perf_counter() - t0 < 5.0
