"""MFSN's segments and frames (sec. 5.1 of Sun et al., arXiv 2306.09361; see ``mfsn.py``).

What :meth:`ser_core.models.mfsn.MFSN.collate` needs to cut an utterance into 3 s segments:
which segment and position each speech frame gets (:func:`segment_layout`, shared with
``MFSN.axis_labels``), each segment's normalised log spectrogram and MFCC (the co-attention
streams' inputs), and the SEC levels of a second encoder resampled onto Whisper's frames.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ser_core.encoders import spectral
from ser_core.errors import InputError

if TYPE_CHECKING:
    from ser_core.models.mfsn import MFSNConfig

__all__ = ["SAMPLE_RATE", "SPECTRAL_HOP", "segment_layout"]

SAMPLE_RATE = 16000
SPECTRAL_HOP = 160  # 10 ms: spectral.log_spectrogram / spectral.mfcc defaults


def segment_layout(n_samples: int, frame_times: np.ndarray, cfg: MFSNConfig
                   ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Which 3 s segment and which position in it each kept speech frame has.

    Segment s covers [s·seconds, (s+1)·seconds) (``spectral.spectrogram_segments``); a frame
    belongs to the segment that holds its centre time. Returns (n_segments, frame index,
    segment, position) for the kept frames, in time order. Shared by :meth:`MFSN.collate` and
    :meth:`MFSN.axis_labels`, so the trace's labels match the batch's frames exactly.
    """
    seg_samples = int(round(cfg.segment_seconds * SAMPLE_RATE))
    n_segments = min(max(1, math.ceil(n_samples / seg_samples)), cfg.max_segments)
    t = np.asarray(frame_times, dtype=np.float64)
    seg = np.floor(t / cfg.segment_seconds).astype(np.int64)
    idx = np.flatnonzero((seg >= 0) & (seg < n_segments))
    seg_k = seg[idx]
    pos = np.arange(len(idx)) - np.searchsorted(seg_k, seg_k, side="left")
    keep = pos < cfg.frames_per_segment
    return n_segments, idx[keep], seg_k[keep], pos[keep]


def _spectral_segments(audio: np.ndarray, cfg: MFSNConfig, n_segments: int
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Log spectrogram [S, 257, Ts] and MFCC [S, n_mfcc, Ts] of each segment, normalised.

    Zou et al. min-max scale spectrograms with training-set statistics and L2-normalise each
    MFCC frame. The MFCC frames are L2-normalised here too; without training statistics at
    collate time the log spectrogram is standardised per utterance (one mean and std over its
    real frames, so the spectral shape and its changes over time stay). Padding frames (past
    the audio's end) are zeroed. Returns (spec, mfcc, frame_mask True = pad, starts).
    """
    segs = spectral.spectrogram_segments(audio, cfg.segment_seconds)
    pieces, starts, lengths = segs.segments[:n_segments], segs.start_times[:n_segments], segs.lengths[:n_segments]
    spec = spectral.log_spectrogram(pieces)  # [S, 257, Ts]
    mfcc = spectral.mfcc(pieces, n_mfcc=cfg.n_mfcc)  # [S, n_mfcc, Ts]
    Ts = spec.shape[-1]
    valid_frames = torch.clamp(1 + lengths // SPECTRAL_HOP, max=Ts)
    pad = torch.arange(Ts)[None, :] >= valid_frames[:, None]  # [S, Ts]
    keep = (~pad)[:, None, :].float()
    n = keep.sum()
    mean = (spec * keep).sum() / (n * spec.shape[1])
    std = (((spec - mean) ** 2 * keep).sum() / (n * spec.shape[1])).sqrt().clamp(min=1e-5)
    spec = (spec - mean) / std * keep
    mfcc = F.normalize(mfcc, p=2.0, dim=1) * keep  # each frame's coefficients to unit L2 norm (Zou et al.)
    return spec, mfcc, pad, starts


def _resample_levels(levels: np.ndarray, times: np.ndarray | None, duration: float,
                     target_times: np.ndarray) -> np.ndarray:
    """Linear interpolation of [levels, T', D] frames (at ``times``, or evenly spaced over the
    utterance) onto the Whisper frame times: TEC and SEC must share one frame axis for the
    frame-wise fusion operations."""
    if levels.ndim != 3 or levels.shape[1] == 0:
        raise InputError(f"sec_levels must be [levels, frames, dim] with frames; got {levels.shape}.")
    n = levels.shape[1]
    if times is not None:
        times = np.asarray(times, dtype=np.float64)
        if times.shape != (n,):
            raise InputError(f"sec_times has {times.size} times for {n} sec_levels frames.")
    else:
        times = (np.arange(n) + 0.5) * (duration / max(n, 1))
    pos = np.interp(target_times, times, np.arange(n, dtype=np.float64))
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = (pos - lo)[None, :, None]
    return ((1 - w) * levels[:, lo] + w * levels[:, hi]).astype(np.float32)


class _Segmented(NamedTuple):
    """One utterance cut into segments, before padding into a batch (see MFSN.collate)."""

    n_segments: int
    frame_index: np.ndarray  # kept speech frames (segment_layout)
    segment: np.ndarray  # their segment
    position: np.ndarray  # their position in it
    tec: np.ndarray  # [T, D] the TEC layer
    sec: np.ndarray  # [levels, T, D'] the SEC levels on the same frames
    spec: Tensor  # [S, 257, Ts]
    mfcc: Tensor  # [S, n_mfcc, Ts]
    spectral_pad: Tensor  # [S, Ts]
    starts: Tensor  # [S] seconds
