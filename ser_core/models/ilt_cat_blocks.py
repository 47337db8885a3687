"""The building blocks ILT and CAT share (He, Minematsu, Saito; see ``ilt_cat.py``).

Padding-aware helpers (real lengths → masks, masked means), the sinusoidal positional encoding
(eq. 3–4), the batch norm whose statistics skip padded frames and its recalibration with
dropout off, the conv block and the CNN C = CNN(X) (eq. 5), an LSTM run on the real steps only,
and the post-norm Transformer layer (eq. 1–2) for self attention (ILT) and cross attention (CAT).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ser_core.attention import AttentionInfo, KeySparseMultiheadAttention
from ser_core.models.base import RawAttention

if TYPE_CHECKING:
    from ser_core.models.ilt_cat import LogMelFrontEndConfig

__all__ = ["CNN", "ConvBlock", "MaskedBatchNorm", "TransformerLayer", "recalibrate_batch_norm", "sinusoidal_encoding"]


def _valid(lengths: Tensor, T: int) -> Tensor:
    """[B] real lengths → [B, T] bool, True at real positions (they come first)."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real (mask False) positions: [B, T, d] → [B, d]."""
    valid = (~mask).to(x.dtype)[..., None]
    return (x * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)


def sinusoidal_encoding(positions: Tensor, d: int) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...) (eq. 3–4): [T] → [T, d]."""
    two_i = torch.arange(0, d, 2, dtype=torch.float32, device=positions.device)
    angle = positions.to(torch.float32)[:, None] / torch.pow(10000.0, two_i / d)
    pe = torch.zeros(len(positions), d, device=positions.device)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe


class MaskedBatchNorm(nn.Module):
    """Batch normalisation over channel dim 1 whose statistics skip padded frames (last dim).

    x: [B, C, ..., T], valid: [B, T] (True = real frame). Training uses the real frames'
    mean and variance and updates running statistics (momentum 0.1, like ``nn.BatchNorm``);
    evaluation uses the running ones. Padded positions are normalised too but must be
    ignored or zeroed by the caller (the conv blocks drop them at the pooling).
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum  # momentum None: a cumulative average
        self.batches_seen = 0
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        B, C, T = x.shape[0], x.shape[1], x.shape[-1]
        shape = (1, C, *([1] * (x.dim() - 2)))
        if self.training:
            w = valid.to(x.dtype).view(B, *([1] * (x.dim() - 2)), T)  # [B, 1, ..., 1, T]
            dims = [0, *range(2, x.dim())]
            n = float(valid.sum()) * (x[0, 0].numel() // T)  # real values per channel
            xw = x * w
            mean = xw.sum(dims) / n
            var = ((xw * x).sum(dims) / n - mean.square()).clamp(min=0.0)  # E[x²] − E[x]²: one pass
            with torch.no_grad():
                self.batches_seen += 1
                rate = self.momentum if self.momentum is not None else 1.0 / self.batches_seen
                self.running_mean.lerp_(mean.detach(), rate)
                self.running_var.lerp_(var.detach() * (n / max(n - 1.0, 1.0)), rate)
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        return x * scale.view(shape) + shift.view(shape)


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches) -> int:
    """Re-estimate every MaskedBatchNorm's running statistics with dropout off.

    The paper's conv block ends with dropout, so during training each block's batch norm sees
    inputs whose variance dropout has inflated; at evaluation (no dropout) the running
    statistics no longer fit and accuracy drops ("variance shift", Li et al., CVPR 2019: on the
    demo corpus ILT's validation UA went from 0.55 with the training-time statistics to 0.69
    with batch statistics). So, after each epoch, the statistics are averaged afresh over
    training batches with every other module in eval mode. Returns the batches used.
    """
    norms = [m for m in model.modules() if isinstance(m, MaskedBatchNorm)]
    was_training = model.training
    model.eval()
    saved = [(m.momentum, m.batches_seen) for m in norms]
    for m in norms:
        m.train()
        m.momentum, m.batches_seen = None, 0
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
    used = 0
    for batch in batches:
        model(batch)
        used += 1
    for m, (momentum, seen) in zip(norms, saved):
        m.momentum, m.batches_seen = momentum, seen
        m.eval()
    model.train(was_training)
    return used


class ConvBlock(nn.Module):
    """One conv block (sec. 2.2): convolution, batch normalization, average pooling, dropout.

    A ReLU after the batch norm is ours (the paper lists no activation). Pooling floors: a
    pooled step is real when all the frames it averages are real.
    """

    def __init__(self, c_in: int, c_out: int, freq_pool: int, time_pool: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
        self.norm = MaskedBatchNorm(c_out)
        self.pool = nn.AvgPool2d((freq_pool, time_pool))
        self.time_pool = time_pool
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, C, F, T] (0 at padded frames), lengths [B] → pooled x, pooled lengths."""
        # Padded frames of the BN output are not zeroed: the floor pooling drops them.
        x = self.pool(F.relu(self.norm(self.conv(x), _valid(lengths, x.shape[-1]))))
        lengths = torch.div(lengths, self.time_pool, rounding_mode="floor")
        x = x * _valid(lengths, x.shape[-1]).to(x.dtype)[:, None, None, :]
        return self.dropout(x), lengths


class CNN(nn.Module):
    """C = CNN(X) (eq. 5): conv blocks over the (mel × frame) image; each time step's
    channels × remaining mel bands are projected to d_model (the projection is ours)."""

    def __init__(self, cfg: LogMelFrontEndConfig) -> None:
        super().__init__()
        c_in, blocks = 1, []
        for c_out, fp, tp in zip(cfg.cnn_channels, cfg.cnn_freq_pool, cfg.cnn_time_pool):
            blocks.append(ConvBlock(c_in, c_out, fp, tp, cfg.dropout))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        bands = cfg.n_mels // math.prod(cfg.cnn_freq_pool)
        self.proj = nn.Linear(c_in * bands, cfg.d_model)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, n_mels, T] (normalised, 0 at padding) → C [B, K, d_model] (0 at padding), lengths [B]."""
        x = x[:, None]  # one input channel
        for block in self.blocks:
            x, lengths = block(x, lengths)
        B, C, Fq, K = x.shape
        c = self.proj(x.permute(0, 3, 1, 2).reshape(B, K, C * Fq))
        return c * _valid(lengths, K).to(c.dtype)[..., None], lengths


def _run_lstm(lstm: nn.LSTM, x: Tensor, lengths: Tensor) -> Tensor:
    """Run an LSTM over the real steps only (packed), so the backward direction of a bi-LSTM
    starts at the item's real end; outputs at padded steps are 0."""
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out


class TransformerLayer(nn.Module):
    """A post-norm Transformer encoder layer [12]: x = LN(x + MHA(x, kv)) (eq. 1–2),
    x = LN(x + FFN(x)). ``kv=None``: self-attention (ILT); given: cross attention (CAT).
    The attention is ser_core's multi-head attention at keep_ratio 1, i.e. vanilla."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.attention = KeySparseMultiheadAttention(d_model, heads)
        self.attention_norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ff_dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(ff_dim, d_model))
        self.ffn_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, x_mask: Tensor, kv: Tensor | None = None, kv_mask: Tensor | None = None,
                record: bool = False) -> tuple[Tensor, AttentionInfo | None]:
        a, info = self.attention(x, kv, key_padding_mask=x_mask if kv is None else kv_mask,
                                 query_padding_mask=x_mask, keep_ratio=1.0, need_weights=record)
        x = self.attention_norm(x + self.dropout(a))
        x = self.ffn_norm(x + self.dropout(self.ffn(x)))
        return x * (~x_mask).to(x.dtype)[..., None], info


def _raw(name: str, info: AttentionInfo | None, kind: str, query: str, key: str) -> RawAttention:
    assert info is not None  # record=True asks every layer for its maps
    return RawAttention(name=name, kind=kind, query_modality=query, key_modality=key,
                        weights=info.weights, key_scores=info.key_scores)
