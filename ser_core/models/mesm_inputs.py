"""MESM's inputs (Sec. 4.1, 5.3 of Dai et al., NAACL 2021; see ``mesm.py``): the audio cut
into 400 ms log-mel chunks, and the face crops, per utterance, before :meth:`MESM.collate`
pads them into a batch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ser_core.encoders.spectral import mel_chunks
from ser_core.errors import InputError
from ser_core.features import SAMPLE_RATE, Features

if TYPE_CHECKING:
    from ser_core.models.mesm import MESMConfig

__all__ = ["CHUNK_FRAMES", "CHUNK_SAMPLES", "CHUNK_SECONDS", "FACE_STEP"]

CHUNK_SECONDS = 0.4  # "chunk the spectrograms per 400 ms time window" (Sec. 5.3)
CHUNK_SAMPLES = int(round(CHUNK_SECONDS * SAMPLE_RATE))
CHUNK_FRAMES = 32  # 400 ms / 12.5 ms hop
FACE_STEP = 0.2  # seconds between face crops (5 fps) when face_times does not say


def _chunk_count(n_samples: int, cfg: MESMConfig) -> int:
    return min(max(1, math.ceil(n_samples / CHUNK_SAMPLES)), cfg.max_chunks)


def _utterance_chunks(audio: np.ndarray, cfg: MESMConfig) -> tuple[Tensor, Tensor]:
    """[n, n_mels, 32] log-mel chunks standardised over the utterance's real frames, padded
    frames 0; and the real frames per chunk [n]."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)[: cfg.max_chunks * CHUNK_SAMPLES]
    if audio.size == 0:
        raise InputError("The audio is empty.")
    mc = mel_chunks(audio, n_mels=cfg.n_mels)
    real = ~mc.frame_mask  # [n, 32]
    values = mc.chunks.permute(0, 2, 1)[real]  # [frames, n_mels]
    mean, std = values.mean(), values.std(unbiased=False).clamp(min=1e-5)
    chunks = ((mc.chunks - mean) / std) * real[:, None, :]
    return chunks, mc.lengths


def _face_index(n: int, cap: int) -> np.ndarray:
    """Which of n face frames are used: all, or ``cap`` evenly spaced ones."""
    if n <= cap:
        return np.arange(n)
    return np.round(np.linspace(0, n - 1, cap)).astype(int)


def _utterance_faces(feats: Features, cfg: MESMConfig) -> Tensor:
    faces = feats.extra.get("faces")
    s = cfg.face_size
    if faces is None or len(faces) == 0:
        return torch.zeros(0, s, s, 3, dtype=torch.uint8)
    faces = np.asarray(faces)
    if faces.ndim != 4 or faces.shape[-1] not in (1, 3):
        raise InputError(f"Face crops must be [N, H, W, 3] (or 1 channel); got {faces.shape}.")
    x = torch.from_numpy(np.ascontiguousarray(faces[_face_index(len(faces), cfg.max_faces)]))
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255 if x.is_floating_point() and float(x.max()) <= 1 else x.float()
             ).round().clamp(0, 255).to(torch.uint8)
    if x.shape[-1] == 1:
        x = x.expand(-1, -1, -1, 3)
    if x.shape[1:3] != (s, s):
        x = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(s, s), mode="bilinear", antialias=True,
                          align_corners=False).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return x.contiguous()


def _face_times(feats: Features, cfg: MESMConfig) -> tuple[np.ndarray, float]:
    """Times (s) of the face frames the model uses, and the time step between crops."""
    faces = feats.extra.get("faces")
    n = 0 if faces is None else len(faces)
    times = feats.extra.get("face_times")
    times = np.arange(n) * FACE_STEP if times is None or len(times) != n else np.asarray(times, dtype=float)
    step = float(np.median(np.diff(times))) if n > 1 else FACE_STEP
    return times[_face_index(n, cfg.max_faces)], step
