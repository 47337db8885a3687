"""Spectral features on torchaudio transforms (run on CPU or GPU, wherever the audio is).

* :func:`log_mel` — ILT/CAT's input: 40 mel bands, 25 ms window, 10 ms hop, log.
* :func:`mfcc` — MFSN's MFCC stream (and :func:`log_spectrogram`, its spectrogram stream).
* :func:`mel_chunks` — MESM's acoustic input: a mel spectrogram (25 ms window, 12.5 ms hop) cut
  into 400 ms chunks. The paper does not give the number of mel bands; we use 64.
* :func:`spectrogram_segments` — MFSN's 3 s segments of an utterance (after Co-attention [9]).

Every function takes a 1-D waveform (``np.ndarray`` or ``torch.Tensor`` on any device) at
16 kHz, or a batch ``[..., n]``, and returns float32 tensors on the input's device. Frames are
centred (``center=True``): frame ``t`` is centred on sample ``t * hop``, so there are
``1 + n // hop`` frames and :func:`frame_times` gives their centres.

Transforms are built once per (parameters, device) and cached (:func:`_transform`).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple, Union

import numpy as np
import torch
import torchaudio

from ser_core.audio import SAMPLE_RATE

Audio = Union[np.ndarray, torch.Tensor]

LOG_FLOOR = 1e-10  # power floor before the log (librosa's power_to_db `amin`)
MESM_N_MELS = 64  # not stated in the MESM paper: our choice
# librosa's defaults (Slaney mel scale, area-normalised filters): ILT/CAT extracted its log-mels
# with librosa, so the filter bank is librosa's; we use the same one for every mel feature.
MEL_SCALE = "slaney"
MEL_NORM = "slaney"


def _samples(ms: float, sr: int) -> int:
    n = int(round(ms * sr / 1000.0))
    if n <= 0:
        raise ValueError(f"{ms} ms is less than one sample at {sr} Hz")
    return n


def _n_fft(win_length: int) -> int:
    """FFT size: the window length rounded up to a power of two (400 → 512 at 16 kHz)."""
    return 1 << (win_length - 1).bit_length()


def _as_tensor(audio: Audio) -> torch.Tensor:
    """Waveform as float32 tensor (kept on its device); shorter than one window is zero-padded."""
    if isinstance(audio, torch.Tensor):
        x = audio.detach()
        x = x.float() if x.dtype != torch.float32 else x
    else:
        x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError("audio must have at least one sample")
    return x


def _pad_to(x: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad the last axis to at least ``n`` samples (centred STFT needs > n_fft/2)."""
    if x.shape[-1] >= n:
        return x
    return torch.nn.functional.pad(x, (0, n - x.shape[-1]))


@lru_cache(maxsize=32)
def _transform(kind: str, device: str, **params) -> torch.nn.Module:
    """One torchaudio transform per (kind, parameters, device), built once."""
    if kind == "mel":
        module = torchaudio.transforms.MelSpectrogram(
            power=2.0, center=True, mel_scale=MEL_SCALE, norm=MEL_NORM, **params
        )
    elif kind == "mfcc":
        melkwargs = {k: params.pop(k) for k in ("n_fft", "win_length", "hop_length", "n_mels")}
        melkwargs.update(center=True, mel_scale=MEL_SCALE, norm=MEL_NORM)
        module = torchaudio.transforms.MFCC(melkwargs=melkwargs, **params)
    elif kind == "spec":
        module = torchaudio.transforms.Spectrogram(power=2.0, center=True, **params)
    else:
        raise ValueError(kind)
    return module.to(torch.device(device)).eval()


def frame_times(n_frames: int, hop_ms: float = 10.0) -> np.ndarray:
    """Centre time in seconds of each of ``n_frames`` centred frames with hop ``hop_ms``."""
    return np.arange(n_frames, dtype=np.float64) * (hop_ms / 1000.0)


def log_mel(
    audio: Audio,
    n_mels: int = 40,
    win_ms: float = 25.0,
    hop_ms: float = 10.0,
    sample_rate: int = SAMPLE_RATE,
    floor: float = LOG_FLOOR,
) -> torch.Tensor:
    """Log mel spectrogram ``[n_mels, T]`` (``[..., n_mels, T]`` for a batch), T = 1 + n // hop.

    ILT/CAT (Sec. 3.2): 40 filter banks, 25 ms window, 10 ms frame shift, log of the mel power
    (natural log of max(power, ``floor``)). A 7.5 s utterance gives 40 × 751 (the paper's
    40 × 750 drops the last centred frame).
    """
    x = _as_tensor(audio)
    win = _samples(win_ms, sample_rate)
    hop = _samples(hop_ms, sample_rate)
    n_fft = _n_fft(win)
    x = _pad_to(x, n_fft // 2 + 1)
    mel = _transform(
        "mel", str(x.device), sample_rate=sample_rate, n_fft=n_fft, win_length=win,
        hop_length=hop, n_mels=n_mels,
    )
    with torch.no_grad():
        return torch.log(torch.clamp(mel(x), min=floor))


def mfcc(
    audio: Audio,
    n_mfcc: int = 40,
    n_mels: int = 64,
    win_ms: float = 25.0,
    hop_ms: float = 10.0,
    sample_rate: int = SAMPLE_RATE,
) -> torch.Tensor:
    """MFCC ``[n_mfcc, T]``: DCT-II (ortho) of the mel power in dB (top_db 80), torchaudio's MFCC.

    MFSN (Sec. 5.1) feeds MFCCs of each 3 s segment to its Co-attention analysis module; the
    paper gives no sizes, so 40 coefficients from 64 mel bands, 25 ms / 10 ms are our choice.
    """
    if n_mfcc > n_mels:
        raise ValueError(f"n_mfcc ({n_mfcc}) must not exceed n_mels ({n_mels})")
    x = _as_tensor(audio)
    win = _samples(win_ms, sample_rate)
    hop = _samples(hop_ms, sample_rate)
    n_fft = _n_fft(win)
    x = _pad_to(x, n_fft // 2 + 1)
    transform = _transform(
        "mfcc", str(x.device), sample_rate=sample_rate, n_mfcc=n_mfcc, n_fft=n_fft,
        win_length=win, hop_length=hop, n_mels=n_mels,
    )
    with torch.no_grad():
        return transform(x)


def log_spectrogram(
    audio: Audio,
    win_ms: float = 25.0,
    hop_ms: float = 10.0,
    sample_rate: int = SAMPLE_RATE,
    floor: float = LOG_FLOOR,
) -> torch.Tensor:
    """Log power spectrogram ``[n_fft // 2 + 1, T]`` (MFSN's spectrogram stream)."""
    x = _as_tensor(audio)
    win = _samples(win_ms, sample_rate)
    hop = _samples(hop_ms, sample_rate)
    n_fft = _n_fft(win)
    x = _pad_to(x, n_fft // 2 + 1)
    spec = _transform("spec", str(x.device), n_fft=n_fft, win_length=win, hop_length=hop)
    with torch.no_grad():
        return torch.log(torch.clamp(spec(x), min=floor))


class MelChunks(NamedTuple):
    """MESM's acoustic sequence: a mel spectrogram cut into fixed-length chunks.

    chunks: ``[n_chunks, n_mels, frames_per_chunk]`` log mel; the last chunk is padded with
        ``log(floor)`` (what silence gives) past its ``lengths[-1]`` real frames.
    start_times: ``[n_chunks]`` seconds at which each chunk starts.
    lengths: ``[n_chunks]`` long, real (unpadded) frames in each chunk.
    """

    chunks: torch.Tensor
    start_times: torch.Tensor
    lengths: torch.Tensor

    @property
    def frame_mask(self) -> torch.Tensor:
        """``[n_chunks, frames_per_chunk]`` bool, True at padded frames."""
        frames = self.chunks.shape[-1]
        idx = torch.arange(frames, device=self.lengths.device)
        return idx[None, :] >= self.lengths[:, None]


def mel_chunks(
    audio: Audio,
    chunk_ms: float = 400.0,
    win_ms: float = 25.0,
    hop_ms: float = 12.5,
    n_mels: int = MESM_N_MELS,
    sample_rate: int = SAMPLE_RATE,
    floor: float = LOG_FLOOR,
) -> MelChunks:
    """Log mel spectrogram (25 ms window, 12.5 ms stride) chunked per 400 ms (MESM, Sec. 5.3).

    ``n_chunks = ceil(n_samples / chunk_samples)``: chunk ``i`` covers
    ``[i * chunk_ms, (i + 1) * chunk_ms)`` and holds the frames centred inside it (32 frames of
    12.5 ms in 400 ms). Only 1-D audio.
    """
    x = _as_tensor(audio)
    if x.ndim != 1:
        raise ValueError(f"mel_chunks takes one waveform [n], got shape {tuple(x.shape)}")
    hop = _samples(hop_ms, sample_rate)
    chunk = _samples(chunk_ms, sample_rate)
    if chunk % hop:
        raise ValueError(f"chunk_ms ({chunk_ms}) must be a whole number of hops ({hop_ms} ms)")
    per_chunk = chunk // hop
    n_samples = x.shape[-1]
    spec = log_mel(x, n_mels=n_mels, win_ms=win_ms, hop_ms=hop_ms, sample_rate=sample_rate,
                   floor=floor)  # [n_mels, T], T = 1 + n // hop
    n_chunks = max(1, math.ceil(n_samples / chunk))
    total = n_chunks * per_chunk
    n_frames = min(spec.shape[-1], total)
    padded = spec.new_full((n_mels, total), math.log(floor))
    padded[:, :n_frames] = spec[:, :n_frames]
    chunks = padded.reshape(n_mels, n_chunks, per_chunk).permute(1, 0, 2).contiguous()
    starts = torch.arange(n_chunks, device=x.device, dtype=torch.float32) * (chunk_ms / 1000.0)
    lengths = (n_frames - torch.arange(n_chunks, device=x.device) * per_chunk).clamp(0, per_chunk)
    return MelChunks(chunks, starts, lengths.long())


class Segments(NamedTuple):
    """Fixed-length waveform segments of one utterance.

    segments: ``[n_segments, segment_samples]`` float32 (iterate it for a list of segments).
    start_times: ``[n_segments]`` seconds.
    lengths: ``[n_segments]`` real (unpadded) samples in each segment.
    """

    segments: torch.Tensor
    start_times: torch.Tensor
    lengths: torch.Tensor


def spectrogram_segments(
    audio: Audio, seconds: float = 3.0, sample_rate: int = SAMPLE_RATE
) -> Segments:
    """Cut an utterance into back-to-back ``seconds``-long segments (MFSN, Sec. 5.1).

    The last, shorter piece is zero-padded to full length (its real length is in ``lengths``);
    an utterance shorter than ``seconds`` gives one padded segment. MFSN computes the
    spectrogram and MFCC of each segment (``log_spectrogram`` / ``mfcc`` take the batch
    directly) and averages the segment predictions into the utterance's.
    """
    x = _as_tensor(audio)
    if x.ndim != 1:
        raise ValueError(f"spectrogram_segments takes one waveform [n], got {tuple(x.shape)}")
    seg = int(round(seconds * sample_rate))
    if seg <= 0:
        raise ValueError("seconds must be positive")
    n = x.shape[0]
    n_segments = max(1, math.ceil(n / seg))
    padded = torch.nn.functional.pad(x, (0, n_segments * seg - n))
    segments = padded.reshape(n_segments, seg)
    starts = torch.arange(n_segments, device=x.device, dtype=torch.float32) * float(seconds)
    lengths = (n - torch.arange(n_segments, device=x.device) * seg).clamp(0, seg).long()
    return Segments(segments, starts, lengths)
