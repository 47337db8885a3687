"""ser_core.encoders.spectral: shapes, times, chunking, agreement with librosa, devices."""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import torch

from ser_core.encoders import spectral
from ser_core.encoders.spectral import (
    LOG_FLOOR,
    MESM_N_MELS,
    frame_times,
    log_mel,
    log_spectrogram,
    mel_chunks,
    mfcc,
    spectrogram_segments,
)

SR = 16000
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).normal(size=int(seconds * SR))).astype(np.float32)


def tone_burst(seconds: float, at: float, length: float = 0.1, freq: float = 1000.0):
    """Near-silence with a loud tone burst starting at ``at`` seconds."""
    x = 1e-4 * np.random.default_rng(1).normal(size=int(seconds * SR))
    i0, i1 = int(at * SR), int((at + length) * SR)
    x[i0:i1] += 0.5 * np.sin(2 * np.pi * freq * np.arange(i1 - i0) / SR)
    return x.astype(np.float32)


@pytest.mark.parametrize("seconds", [0.1, 1.0, 7.5])
def test_log_mel_shape_matches_ilt_setup(seconds):
    x = noise(seconds)
    m = log_mel(x)
    assert m.dtype == torch.float32 and m.device.type == "cpu"
    assert m.shape == (40, 1 + len(x) // 160)  # 40 bands, 10 ms hop, centred frames
    assert torch.isfinite(m).all()


def test_log_mel_equals_librosa():
    """ILT/CAT used librosa: same filter bank, window, hop → same numbers."""
    x = noise(2.0)
    ref = librosa.feature.melspectrogram(
        y=x, sr=SR, n_fft=512, win_length=400, hop_length=160, n_mels=40, pad_mode="reflect"
    )
    np.testing.assert_allclose(log_mel(x).numpy(), np.log(np.maximum(ref, LOG_FLOOR)), atol=1e-4)


def test_mfcc_equals_librosa():
    x = noise(2.0, seed=3)
    ref = librosa.feature.mfcc(
        y=x, sr=SR, n_mfcc=40, n_fft=512, win_length=400, hop_length=160, n_mels=64,
        pad_mode="reflect",
    )
    out = mfcc(x)
    assert out.shape == (40, 1 + len(x) // 160)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-3 * np.abs(ref).max())
    with pytest.raises(ValueError):
        mfcc(x, n_mfcc=80, n_mels=64)


def test_log_spectrogram_shape():
    x = noise(1.0)
    assert log_spectrogram(x).shape == (257, 101)


@pytest.mark.parametrize("at", [0.3, 1.25, 2.0])
def test_frame_times_locate_a_burst(at):
    x = tone_burst(3.0, at)
    energy = log_mel(x).exp().sum(dim=0).numpy()
    times = frame_times(len(energy), hop_ms=10)
    onset = times[np.argmax(energy > energy.max() / 10)]
    assert abs(onset - at) <= 0.02  # within two hops of the true onset
    assert times[1] - times[0] == pytest.approx(0.01)


@pytest.mark.parametrize(
    "seconds,n_chunks,last_len",
    [(0.2, 1, 17), (0.4, 1, 32), (1.0, 3, 17), (2.0, 5, 32), (2.45, 7, 5)],
)
def test_mel_chunks_count_and_padding(seconds, n_chunks, last_len):
    x = noise(seconds)
    out = mel_chunks(x)
    assert out.chunks.shape == (n_chunks, MESM_N_MELS, 32)  # 400 ms / 12.5 ms = 32 frames
    assert out.chunks.dtype == torch.float32
    np.testing.assert_allclose(out.start_times.numpy(), 0.4 * np.arange(n_chunks), atol=1e-6)
    assert int(out.lengths[-1]) == last_len
    assert (out.lengths[:-1] == 32).all()
    # chunks are the spectrogram cut in order; padding holds log(floor)
    full = log_mel(x, n_mels=MESM_N_MELS, hop_ms=12.5)
    flat = out.chunks.permute(1, 0, 2).reshape(MESM_N_MELS, -1)
    real = int(out.lengths.sum())
    assert torch.equal(flat[:, :real], full[:, :real])
    assert (flat[:, real:] == math.log(LOG_FLOOR)).all()
    mask = out.frame_mask
    assert mask.shape == (n_chunks, 32) and int((~mask).sum()) == real


def test_mel_chunk_holds_its_burst():
    out = mel_chunks(tone_burst(2.0, at=1.0, length=0.15))
    energy = out.chunks.exp().sum(dim=(1, 2))
    assert int(energy.argmax()) == 2  # 1.0–1.15 s lies in chunk [0.8, 1.2)


def test_mel_chunks_rejects_bad_sizes():
    with pytest.raises(ValueError):
        mel_chunks(noise(1.0), chunk_ms=410)
    with pytest.raises(ValueError):
        mel_chunks(np.zeros((2, 16000), np.float32))


@pytest.mark.parametrize("seconds,n_segments", [(1.0, 1), (3.0, 1), (7.0, 3), (9.0, 3)])
def test_spectrogram_segments(seconds, n_segments):
    x = noise(seconds)
    out = spectrogram_segments(x, seconds=3.0)
    assert out.segments.shape == (n_segments, 3 * SR)
    np.testing.assert_allclose(out.start_times.numpy(), 3.0 * np.arange(n_segments))
    assert int(out.lengths.sum()) == len(x)
    flat = out.segments.reshape(-1).numpy()
    np.testing.assert_array_equal(flat[: len(x)], x)
    assert not flat[len(x):].any()
    # a batch of segments goes straight into the features
    assert mfcc(out.segments).shape == (n_segments, 40, 301)
    assert log_spectrogram(out.segments).shape == (n_segments, 257, 301)
    assert len(list(out.segments)) == n_segments


def test_inputs_numpy_float64_and_tensor_agree():
    x = noise(1.0)
    a = log_mel(x)
    b = log_mel(x.astype(np.float64))
    c = log_mel(torch.from_numpy(x).requires_grad_(True))
    assert b.dtype == torch.float32 and c.dtype == torch.float32
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c)
    batch = log_mel(np.stack([x, x[::-1].copy()]))
    assert batch.shape == (2, 40, 101) and torch.allclose(batch[0], a, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_device_placement(device):
    x = torch.from_numpy(noise(1.0)).to(device)
    for out in (log_mel(x), mfcc(x), log_spectrogram(x), mel_chunks(x).chunks,
                mel_chunks(x).lengths, spectrogram_segments(x).segments):
        assert out.device.type == device
    np.testing.assert_allclose(log_mel(x).cpu().numpy(), log_mel(x.cpu()).numpy(), atol=1e-3)


def test_transforms_are_cached_per_device():
    spectral._transform.cache_clear()
    log_mel(noise(0.5))
    log_mel(noise(0.7))
    info = spectral._transform.cache_info()
    assert info.misses == 1 and info.hits == 1
