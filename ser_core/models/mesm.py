"""MESM: Multimodal End-to-end Sparse Model (text + audio + visual), and its FE2E baseline.

Paper: W. Dai, S. Cahyawijaya, Z. Liu, P. Fung, "Multimodal End-to-End Sparse Model for
Emotion Recognition", NAACL 2021 (papers/mesm_004_*.txt).

Read top to bottom; the parts of Fig. 2 come in order.

Inputs (Sec. 4.1, 5.3)
    t  text:  the frozen MiniLM's CLS vector of the transcript, ``feats.extra["sentence"]``
       [384]. The paper runs its own Transformer over the words and takes its "CLS" output;
       here MiniLM *is* that Transformer (frozen), so the text branch is a projection of its CLS
       (+ LayerNorm) and an FFN. The projected vector is the query q of every cross-modal
       attention layer ("using textual (T) to attend to acoustic (A) and visual (V)", Sec. 7).
    a  audio: log-mel spectrogram (25 ms window, 12.5 ms hop, 64 mels) cut into 400 ms chunks
       of 32 frames (``mel_chunks``), made in :meth:`MESM.collate`, standardised per utterance,
       at most ``max_chunks`` (25 = 10 s; later audio is dropped). Padded frames of the last
       chunk are 0 and never become active points.
    v  visual: 64×64 RGB face crops (5 fps); at most ``max_faces`` (32), evenly subsampled when
       there are more. An utterance may have none: its visual logits are masked out of the
       final weighted sum (a batch may mix items with and without faces).

Per spatial modality (a, v), one CNN per 400 ms chunk / face frame:
    stem      a dense 3×3 conv + ReLU + 2×2 max-pool for the low-level features ("except the
              first one for low-level feature capturing", Sec. 4.3).
    N blocks  (N = len(block_channels), 3 as in Table 6) "cross-modal sparse CNN blocks":
              a cross-modal attention layer (eq. 1–4) then a sparse CNN of two sparse 3×3
              VGG layers (ReLU) and one sparse 2×2 max-pooling layer (Sec. 4.3, 4.3.2).
    flatten   "flattened to vector representations using a linear transformation" (Sec. 4.2).
Then a Transformer over the chunk / frame sequence with a CLS token and learned positions,
and an FFN on the CLS output gives each modality's logits. The final logits are a learned
weighted sum of the modalities' logits (Sec. 4.2): softmax(ω) over the modalities an item
has (the visual one drops out of the sum, renormalised, for an item without faces).

Cross-modal attention layer (Sec. 4.3.1), for one map M [C, H, W] of the sequence and q:
    M_q  = tanh((W_m M + b_m) ⊕ W_q q)          (eq. 1)  ⊕ adds W_q q at every point
    M_i  = softmax(W_i M_q + b_i)                (eq. 2)  softmax over the map's H×W points
    M_ns = NucleusSampling(M_i)                  (eq. 3)  ``ser_core.attention.nucleus_mask``
    M_o  = M_ns ⊗ M                              (eq. 4)
The softmax runs over the map's *active* points only: those that survived the previous
blocks (pooled) and, for audio, that cover at least one real (unpadded) frame; so, as in
Fig. 4, points filtered out by one layer stay out in the next. b_i is left out: a constant
added to every score cancels in the softmax.

Training the attention (our deviation). In the paper's equations and released code the mask
M_ns is a hard 0/1 choice, so W_m, W_q, W_i get no gradient at all. We keep the forward value
of eq. 4 exactly (kept points pass unchanged, dropped points are 0) but use a straight-through
estimator: the kept features are multiplied by ``1 + a − stopgrad(a)`` with
``a = M_i · n_active`` (the attention weight times the number of active points of that map, so
that a uniform map gives a = 1). Its forward value is exactly 1, its backward is that of
scaling each kept point by its (count-normalised) attention weight, so the attention learns
to weight up the points whose features lower the loss. The tests check that W_m, W_q and W_i
receive non-zero gradient.

Sparse CNN (Sec. 4.3.2, submanifold sparse convolution, Graham & van der Maaten 2017).
Features travel as a compact list: the P active points' vectors as rows of a [P + 1, C]
tensor (last row 0) plus their flat indices. A 3×3 sparse conv computes its output only at
the kept points: each point's 3×3 neighbourhood is looked up once per block in an index map
of the zero-bordered maps (a neighbour that is not kept reads the zero row); its P × 9C
neighbourhood matrix (im2col) is gathered block by block into a reused, cache-sized buffer and
multiplied by the conv weight as a 9C × C' matrix (GEMM), with bias and ReLU. This equals the
dense conv of the masked map M_o read at the kept points. Backward (a custom autograd
function): the input gradient of a stride-1 conv is the conv of the output gradient with the
flipped, transposed kernel over the same points, so it is the same gather + GEMM, no scatter.
Both VGG layers of a block use the same points (submanifold); the sparse 2×2 max-pool makes a
pooled point active if any of its inputs is kept, its value the max over the kept inputs
(dropped ones read the zero row, and ReLU outputs are ≥ 0). FE2E ("fully end-to-end",
Sec. 4.2) is the same network with dense convs (oneDNN, channels-last) at every point and no
attention layers; a FE2E model loads a MESM state dict (minus the attention layers) and then
equals MESM at top_p = 1 on unpadded input.

FLOPs. Counted for the feature-extraction CNN (stem, attention layers, convs; not the flatten,
Transformers or heads, as the paper reports "FLOPs in the feature extraction part"), as
2 × multiply-accumulates actually executed: a conv costs 9·C·C' MACs per *computed* output
point (dense: every point; sparse: every kept point, its dropped neighbours included since the
GEMM multiplies their zeros too — the paper's a·m·n counts only active neighbours, ours is the
honest count of our kernel); an attention layer costs (C·k + k) MACs per active point plus
d·k per map for W_q q. Biases, activations, pooling, softmax and sorting are not counted.
``extras["item_extras"]["flops"]`` [B, L] (this model) and ``["flops_dense"]`` [B, L] (what FE2E
would spend on the same item; 0 for attention layers) per layer named by
``extras["model_extras"]["flops_layers"]``; :meth:`MESM.flops` sums them for a batch.

Records (``record=True``): one :class:`RawAttention` per cross-modal attention layer per
spatial modality, named ``"spectrogram.attention{b}"`` / ``"visual.attention{b}"``, kind
"nucleus", ``top_p`` set, H = 1 head:
    query_modality "spectrogram" (the 400 ms chunks) or "visual" (the face frames);
    key_modality   "spectrogram_map{b}" / "visual_map{b}": the block's H_b × W_b map points,
                   flattened row-major (key index = row · W_b + col);
    weights [B, 1, Tq, H_b·W_b] = M_i ⊙ M_ns (the attention weights of the kept points, not
                   renormalised; 0 where dropped or not active);
    keep    [B, 1, Tq, H_b·W_b] bool = M_ns (the points the next sparse layers compute).
How a view draws one query (chunk / frame) j of record r over its image (Fig. 3 / 4):
    H, W = extras["model_extras"]["map_shapes"][r.name]
    grid = r.keep[0, j].reshape(H, W)            (and r.weights[0, j].reshape(H, W))
    spectrogram: the image is chunk j's log-mel [64 mels, 32 frames], i.e.
        ``mel_chunks(feats.audio).chunks[j]`` (row 0 = lowest mel band, so draw it with the
        origin at the bottom); map cell (row, col) covers mel bands
        [row·64/H, (row+1)·64/H) and frames [col·32/W, (col+1)·32/W) of 12.5 ms, i.e. times
        chunk_start + [col, col+1)·0.4/W s.
    visual: the image is face crop j [64, 64, 3] (row 0 = top); cell (row, col) covers pixels
        [row·64/H, (row+1)·64/H) × [col·64/W, (col+1)·64/W).
    ``viz.nucleus_overlay_figure(image, grid, weights)`` lays such a coarse grid over the image.
:meth:`MESM.axis_labels` labels the chunks (start/end s), the face frames (their times) and the
map points ("(row, col)" with ``coords`` [H·W, 2]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ser_core.attention import nucleus_mask
from ser_core.encoders.spectral import MESM_N_MELS, mel_chunks
from ser_core.errors import InputError
from ser_core.features import SAMPLE_RATE, Features
from ser_core.models.base import ModelConfig, ModelOutput, RawAttention, register_model
from ser_core.trace import AxisLabels

__all__ = [
    "FE2E",
    "MESM",
    "MESMConfig",
    "CrossModalAttention",
    "CrossModalSparseBlock",
    "SparseCNN",
    "submanifold_conv3x3",
]

CHUNK_SECONDS = 0.4  # "chunk the spectrograms per 400 ms time window" (Sec. 5.3)
CHUNK_SAMPLES = int(round(CHUNK_SECONDS * SAMPLE_RATE))
CHUNK_FRAMES = 32  # 400 ms / 12.5 ms hop
FACE_STEP = 0.2  # seconds between face crops (5 fps) when face_times does not say
MODALITY_NAMES = {"T": "text", "A": "spectrogram", "V": "visual"}
MODALITY_SETS = ("T", "TA", "TV", "TAV")  # the ablation of Table 5 (text always there)


@dataclass
class MESMConfig(ModelConfig):
    """Hyperparameters (Table 6 where given; CNN sizes are our CPU-sized stand-in for VGG-11)."""

    num_classes: int = 4
    labels: tuple[str, ...] = ("ang", "hap", "neu", "sad")
    text_dim: int = 384  # MiniLM hidden size
    modalities: str = "TAV"  # "T", "TA", "TV" or "TAV" (Table 5)
    # top-p of the nucleus sampling (eq. 3). 0.5: "with a top-p of 0.5, the MESM can achieve
    # comparable performance to the FE2E model with around half of the FLOPs" (Sec. 6.3,
    # Table 4); Table 3 (IEMOCAP) reports p = 0.7. A forward argument overrides it.
    top_p: float = 0.5
    n_mels: int = MESM_N_MELS  # 64 (not stated in the paper)
    max_chunks: int = 25  # 400 ms chunks kept per utterance (10 s)
    max_faces: int = 32  # face frames kept per utterance (evenly subsampled beyond)
    face_size: int = 64
    stem_channels: int = 16  # the dense first conv layer
    # Output channels of each cross-modal sparse CNN block (N = 3, Table 6). VGG-like widths: at
    # 64+ channels the convs dominate the per-point bookkeeping, so skipping points pays on CPU.
    block_channels: tuple[int, ...] = (64, 64, 96)
    attention_dim: int = 8  # k of eq. 1–2 (not given in the paper)
    d_model: int = 64  # "Dim 64" (Table 6)
    heads: int = 4  # "#Heads 4" (Table 6)
    transformer_layers: int = 1  # Table 6 has 4; 1 keeps CPU training fast
    ff_dim: int = 128
    dropout: float = 0.3  # text input projection and the FFN heads
    transformer_dropout: float = 0.1

    def __post_init__(self) -> None:
        if len(self.labels) != self.num_classes:
            raise InputError(f"num_classes={self.num_classes} but {len(self.labels)} labels {self.labels}.")
        if self.modalities not in MODALITY_SETS:
            raise InputError(f"modalities must be one of {MODALITY_SETS}; got {self.modalities!r}.")
        _check_top_p(self.top_p)
        if self.d_model % self.heads:
            raise InputError(f"d_model={self.d_model} must be divisible by heads={self.heads}.")
        if not self.block_channels or min(self.block_channels) < 1 or self.stem_channels < 1:
            raise InputError("block_channels needs at least one block, and every channel count must be ≥ 1.")
        if self.max_chunks < 1 or self.max_faces < 1 or self.attention_dim < 1:
            raise InputError("max_chunks, max_faces and attention_dim must be ≥ 1.")
        for what, size in (("spectrogram", (self.n_mels, CHUNK_FRAMES)), ("face", (self.face_size,) * 2)):
            for side in size:  # the stem and every block halve the map: it must stay even
                if side % (2 ** (len(self.block_channels) + 1)):
                    raise InputError(f"The {what} map {size} cannot be halved {len(self.block_channels) + 1} "
                                     "times; use fewer blocks.")


# --------------------------------------------------------------------------- eq. 1–4

class CrossModalAttention(nn.Module):
    """The cross-modal attention layer (Sec. 4.3.1, eq. 1–3) over the active points of S maps.

    Returns M_i [S, H·W] (softmax over each map's active points; 0 elsewhere) and M_ns [S, H·W]
    (the nucleus mask, a subset of the active points). Eq. 4 is applied by the caller.
    """

    def __init__(self, channels: int, query_dim: int, k: int) -> None:
        super().__init__()
        self.W_m = nn.Linear(channels, k)  # W_m, b_m: a 1×1 map over the channels
        self.W_q = nn.Linear(query_dim, k, bias=False)
        self.W_i = nn.Linear(k, 1, bias=False)  # b_i would cancel in the softmax over H×W

    def forward(self, values: Tensor, points: Tensor, seq: Tensor, S: int, HW: int, q: Tensor,
                top_p: float) -> tuple[Tensor, Tensor]:
        """values [P, C]: the features at the active points ``points`` (ascending flat indices
        s·H·W + row·W + col; ``seq`` = their s); q [S, d]: the text query of each map."""
        shift = self.W_q(q) + self.W_m.bias  # b_m ⊕ W_q q, per map
        if values.shape[0] == S * HW:  # every point active: broadcast over each map's points
            M_q = torch.baddbmm(shift[:, None, :], values.view(S, HW, -1), self.W_m.weight.t().expand(S, -1, -1))
            score = (M_q.tanh_() @ self.W_i.weight[0]).view(-1)  # eq. 1, then W_i M_q of eq. 2
        else:
            M_q = torch.addmm(shift.index_select(0, seq), values, self.W_m.weight.t())
            score = M_q.tanh_() @ self.W_i.weight[0]
        logits = score.new_full((S * HW,), float("-inf")).index_copy(0, points, score).view(S, HW)
        M_i = torch.softmax(logits, dim=-1)  # eq. 2: over each map's H×W (active) points
        # nucleus_mask keeps ≥ 1 point per map; an inactive point (M_i = 0) can only be "kept"
        # when top_p ≥ 1 keeps everything, hence the & with the active points.
        M_ns = nucleus_mask(M_i.detach(), top_p) & (logits != float("-inf"))  # eq. 3
        return M_i, M_ns

    def flops(self, n_active: Tensor) -> Tensor:
        """2 × MACs per map: W_m and W_i at every active point, W_q q once per map."""
        k, C = self.W_m.weight.shape
        return 2.0 * (n_active.double() * (C * k + k) + self.W_q.weight.numel())


# --------------------------------------------------------------------------- sparse conv
#
# Compact sparse features: the P active points' vectors as rows of a [P + 1, C] tensor whose
# last row is 0. Neighbour tables point at that row where a neighbour is not active, so no
# zero-filled dense map is ever built for the sparse layers.

_OFFSETS = [(dh, dw) for dh in (-1, 0, 1) for dw in (-1, 0, 1)]  # kernel order (kh, kw)
_BLOCK_FLOATS = 1 << 18  # im2col floats (1 MiB) per GEMM and thread: the block stays in L2


def _block_rows(C: int) -> int:
    """Points per gather + GEMM block (more threads share a block, so it grows with them)."""
    return max(64, _BLOCK_FLOATS * max(1, torch.get_num_threads()) // (9 * C))


def neighbour_table(points: Tensor, S: int, H: int, W: int) -> Tensor:
    """The 3×3 neighbours of P active points, as rows of their compact list: [P, 9] int32 (in
    kernel order; P = "not active", the zero row).

    points: ascending flat indices (s·H·W + row·W + col). Built with a map of the zero-bordered
    (H+2) × (W+2) maps that holds each point's row (P where none).
    """
    P = points.numel()
    Hp, Wp = H + 2, W + 2
    idx = points.to(torch.int32)  # int32 index arithmetic: half the memory traffic of int64
    seq = torch.div(idx, H * W, rounding_mode="floor")
    row = torch.div(idx - seq * (H * W), W, rounding_mode="floor")
    padded = idx + seq * (Hp * Wp - H * W) + 2 * row + (Wp + 1)  # s·Hp·Wp + (row+1)·Wp + col+1
    where = torch.full((S * Hp * Wp,), P, dtype=torch.int32, device=points.device)
    where.index_copy_(0, padded.long(), torch.arange(P, dtype=torch.int32, device=points.device))
    offsets = torch.tensor([dh * Wp + dw for dh, dw in _OFFSETS], dtype=torch.int32, device=points.device)
    return where.index_select(0, (padded[:, None] + offsets).view(-1)).view(P, 9)


def _im2col_blocks(padded: Tensor, table: Tensor):
    """Yield (i, j, cols): the im2col rows [j − i, 9C] of active points i…j − 1, gathered block
    by block into one reused cache-sized buffer (never a whole P × 9C tensor)."""
    P, C = padded.shape[0] - 1, padded.shape[1]
    step = _block_rows(C)
    buf = padded.new_empty(min(step, max(P, 1)) * 9, C)
    flat = table.reshape(-1)
    for i in range(0, P, step):
        j = min(P, i + step)
        yield i, j, torch.index_select(padded, 0, flat[9 * i: 9 * j], out=buf[: 9 * (j - i)]).view(j - i, 9 * C)


def _gather_gemm(padded: Tensor, table: Tensor, weight: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
    """out[p] = Σ_o padded[table[p, o]] · weight[o] (+ bias) (ReLU), for p < P; out[P] = 0."""
    out = padded.new_empty(padded.shape[0], weight.shape[1])
    out[-1] = 0
    for i, j, cols in _im2col_blocks(padded, table):
        block = out[i:j]
        if bias is None:
            torch.mm(cols, weight, out=block)
        else:
            torch.addmm(bias, cols, weight, out=block)
        if relu:
            block.clamp_(min=0)
    return out


def _gather_weight_grad(padded: Tensor, table: Tensor, grad: Tensor) -> Tensor:
    """Σ_p im2col(x)[p]ᵀ · grad[p], block by block: the gradient of the [9C, C'] weight."""
    gw = padded.new_zeros(9 * padded.shape[1], grad.shape[1])
    for i, j, cols in _im2col_blocks(padded, table):
        gw.addmm_(cols.t(), grad[i:j])
    return gw


class _SubmanifoldConvReLU(torch.autograd.Function):
    """relu(conv3x3(x)) at the active points, on compact [P + 1, C] features. Backward: the
    input gradient of a stride-1 conv is the conv of the output gradient with the flipped,
    transposed kernel, and input and output share the same active points (submanifold), so it
    is the same gather + GEMM (no scatter)."""

    @staticmethod
    def forward(ctx, padded: Tensor, table: Tensor, weight: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        out = _gather_gemm(padded, table, weight, bias, relu=True)
        ctx.save_for_backward(padded, table, weight, out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        padded, table, weight, out = ctx.saved_tensors
        grad = grad * (out > 0)  # through the ReLU; the constant zero row gets none
        C, Co = padded.shape[1], weight.shape[1]
        g_in = g_weight = g_bias = None
        if ctx.needs_input_grad[0]:
            flipped = weight.view(9, C, Co).flip(0).transpose(1, 2).reshape(9 * Co, C)
            g_in = _gather_gemm(grad, table, flipped, None, relu=False)
        if ctx.needs_input_grad[2]:
            g_weight = _gather_weight_grad(padded, table, grad[:-1])
        if ctx.needs_input_grad[3]:
            g_bias = grad.sum(0)
        return g_in, None, g_weight, g_bias


def submanifold_conv3x3(padded: Tensor, table: Tensor, conv: nn.Conv2d) -> Tensor:
    """relu(conv(x)) of a 3×3, padding-1 conv computed only at the P active points:
    [P + 1, C] → [P + 1, C'] (last rows 0). Equal to the dense conv of the zero-filled map read
    at the active points. table: from :func:`neighbour_table`."""
    weight = conv.weight.permute(2, 3, 1, 0).reshape(-1, conv.out_channels)  # [(kh, kw, C), C']
    return _SubmanifoldConvReLU.apply(padded.contiguous(), table, weight, conv.bias)


class _SparseMaxPool(torch.autograd.Function):
    """pooled[q] = max over the kept points p with parent[p] = q of x[p] (x ≥ 0, so the empty max
    is 0); [P + 1, C] → [Q + 1, C], last rows 0. Backward as a gather: each kept point gets its
    parent's gradient where it holds the max (no scatter-add over the points)."""

    @staticmethod
    def forward(ctx, padded: Tensor, parent: Tensor, Q: int) -> Tensor:  # type: ignore[override]
        P = padded.shape[0] - 1
        C = padded.shape[1]
        pooled = padded.new_zeros(Q + 1, C).scatter_reduce_(0, parent[:, None].expand(P, C), padded[:P], "amax")
        ctx.save_for_backward(padded, parent, pooled)
        return pooled

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        padded, parent, pooled = ctx.saved_tensors
        P = padded.shape[0] - 1
        winner = padded[:P] == pooled.index_select(0, parent)
        g = torch.cat([grad.index_select(0, parent) * winner, grad.new_zeros(1, grad.shape[1])])
        return g, None, None


class _TakeRows(torch.autograd.Function):
    """x.index_select(0, rows) for *distinct* rows: backward copies (index_copy) instead of the
    scatter-add that index_select's backward needs for repeated rows."""

    @staticmethod
    def forward(ctx, x: Tensor, rows: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(rows)
        ctx.n = x.shape[0]
        return x.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (rows,) = ctx.saved_tensors
        return grad.new_zeros(ctx.n, grad.shape[1]).index_copy_(0, rows, grad), None


def max_pool2x2(x: Tensor) -> Tensor:
    """Dense 2×2 max-pool of [S, C, H, W] (H, W even) → channels-last [S, C, H/2, W/2], as two
    elementwise maxima over the channels-last layout (faster here than F.max_pool2d)."""
    S, C, H, W = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(S, H // 2, 2, W * C)
    pairs = torch.maximum(rows[:, :, 0], rows[:, :, 1]).view(S, H // 2, W // 2, 2 * C)
    return torch.maximum(pairs[..., :C], pairs[..., C:]).permute(0, 3, 1, 2)


class CrossModalSparseBlock(nn.Module):
    """Cross-modal attention layer + sparse CNN (two sparse VGG layers, sparse max-pool)."""

    def __init__(self, in_channels: int, out_channels: int, query_dim: int, k: int, sparse: bool) -> None:
        super().__init__()
        self.attention = CrossModalAttention(in_channels, query_dim, k) if sparse else None
        self.convs = nn.ModuleList([nn.Conv2d(in_channels, out_channels, 3, padding=1),
                                    nn.Conv2d(out_channels, out_channels, 3, padding=1)])

    def conv_macs(self) -> list[int]:
        return [c.weight[0].numel() * c.out_channels for c in self.convs]  # 9·C·C' per point

    def dense(self, x: Tensor) -> Tensor:
        """FE2E: [S, C, H, W] → [S, C', H/2, W/2] (channels-last)."""
        for conv in self.convs:
            x = F.relu_(conv(x))
        return max_pool2x2(x)

    def sparse(self, points: Tensor, padded: Tensor, S: int, H: int, W: int, q: Tensor,
               top_p: float) -> "BlockResult":
        """MESM on compact features: ``padded`` [P + 1, C] at flat indices ``points`` [P]."""
        assert self.attention is not None
        P = points.numel()
        seq = torch.div(points, H * W, rounding_mode="floor")
        M_i, M_ns = self.attention(padded[:P], points, seq, S, H * W, q, top_p)  # eq. 1–3
        n_active = torch.bincount(seq, minlength=S)
        n_kept = M_ns.sum(1)
        # eq. 4, M_o = M_ns ⊗ M: only the kept points go on (row P: the zero row).
        local = M_ns.view(-1).index_select(0, points).nonzero().squeeze(1)  # kept, within `points`
        kept = points.index_select(0, local)
        h = _TakeRows.apply(padded, torch.cat([local, local.new_full((1,), P)]))
        if torch.is_grad_enabled() and M_i.requires_grad:
            # Straight-through: forward ×1 exactly, backward as if ×(M_i · n_active), so the
            # attention parameters learn (module docstring).
            a = M_i.view(-1).index_select(0, kept) * n_active.index_select(0, seq.index_select(0, local))
            h = h * torch.cat([1.0 + (a - a.detach()), a.new_ones(1)])[:, None]
        table = neighbour_table(kept, S, H, W)  # both VGG layers use the same points
        for conv in self.convs:
            h = submanifold_conv3x3(h, table, conv)
        # Sparse 2×2 max-pool: a pooled point is active if any of its inputs is kept; its value
        # is the max over its kept inputs (dropped ones read the zero row: ReLU outputs are ≥ 0).
        H2, W2 = H // 2, W // 2
        next_points = M_ns.view(S, H2, 2, W2, 2).any(dim=4).any(dim=2).view(-1).nonzero().squeeze(1)
        Q = next_points.numel()
        k = kept.to(torch.int32)
        s_, rem = torch.div(k, H * W, rounding_mode="floor"), k % (H * W)
        row, col = torch.div(rem, W, rounding_mode="floor"), rem % W
        parent_flat = (s_ * (H2 * W2) + torch.div(row, 2, rounding_mode="floor") * W2
                       + torch.div(col, 2, rounding_mode="floor"))
        slot = torch.full((S * H2 * W2,), Q, dtype=torch.long, device=points.device)
        slot.index_copy_(0, next_points, torch.arange(Q, device=points.device))
        next_padded = _SparseMaxPool.apply(h, slot.index_select(0, parent_flat), Q)
        flops = [self.attention.flops(n_active)] + [2.0 * n_kept.double() * m for m in self.conv_macs()]
        return BlockResult(next_points, next_padded, M_i.detach(), M_ns, flops)


@dataclass
class BlockResult:
    points: Tensor  # [Q] flat indices of the active points of the pooled maps
    padded: Tensor  # [Q + 1, C'] their features, then the zero row
    weights: Tensor  # M_i [S, H·W] (detached)
    keep: Tensor  # M_ns [S, H·W] bool
    flops: list[Tensor]  # per layer (attention, conv0, conv1): [S] float64


class SparseCNN(nn.Module):
    """One spatial modality's feature extractor: dense stem + N cross-modal sparse CNN blocks
    + the flattening linear transformation (Sec. 4.2–4.3). ``sparse=False``: FE2E's dense CNN."""

    def __init__(self, in_channels: int, size: tuple[int, int], cfg: MESMConfig, sparse: bool) -> None:
        super().__init__()
        self.sparse = sparse
        self.size = size
        self.stem = nn.Conv2d(in_channels, cfg.stem_channels, 3, padding=1)
        chans = (cfg.stem_channels, *cfg.block_channels)
        self.blocks = nn.ModuleList(
            CrossModalSparseBlock(chans[i], chans[i + 1], cfg.d_model, cfg.attention_dim, sparse)
            for i in range(len(cfg.block_channels))
        )
        H, W = size[0] // 2, size[1] // 2
        self.map_shapes = []  # (H, W) of the map each block's attention layer sees
        for _ in self.blocks:
            self.map_shapes.append((H, W))
            H, W = H // 2, W // 2
        self.out_shape = (chans[-1], H, W)
        self.flatten = nn.Linear(chans[-1] * H * W, cfg.d_model)  # "flattened ... using a linear transformation"
        self.layer_names = ["stem"] + [f"block{b}.{part}" for b in range(len(self.blocks))
                                       for part in ("attention", "conv0", "conv1")]

    def run_stem(self, x: Tensor) -> Tensor:
        """The dense first layer: [S, C_in, H, W] → [S, C0, H/2, W/2], channels-last in memory."""
        return max_pool2x2(F.relu_(self.stem(x.contiguous(memory_format=torch.channels_last))))

    def dense_flops(self, S: int, device: torch.device) -> Tensor:
        """[S, L] what the dense CNN (FE2E) spends per map, layer by layer (attention: 0)."""
        per = [2.0 * self.size[0] * self.size[1] * self.stem.weight.numel()]
        for (H, W), block in zip(self.map_shapes, self.blocks):
            per += [0.0] + [2.0 * H * W * m for m in block.conv_macs()]
        return torch.tensor(per, dtype=torch.float64, device=device).expand(S, -1)

    def forward(self, stem: Tensor, active: Tensor, q: Tensor, top_p: float
                ) -> tuple[Tensor, Tensor, list[BlockResult]]:
        """stem [S, C0, H, W] (from :meth:`run_stem`), active [S, H, W] bool, q [S, d].
        Returns the flattened features [S, d_model], FLOPs [S, L] and the blocks' results."""
        S = stem.shape[0]
        flops = self.dense_flops(S, stem.device).clone()
        if not self.sparse:  # FE2E: dense convs everywhere (channels-last, oneDNN's fast layout)
            x = stem
            for block in self.blocks:
                x = block.dense(x)
            return self.flatten(x.flatten(1)), flops, []
        H, W = stem.shape[2:]
        rows = stem.permute(0, 2, 3, 1).reshape(S * H * W, -1)  # channels-last rows
        if bool(active.all()):
            points = torch.arange(S * H * W, device=stem.device)
        else:
            points = active.reshape(-1).nonzero().squeeze(1)
            rows = _TakeRows.apply(rows, points)
        padded = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
        results = []
        for b, block in enumerate(self.blocks):
            res = block.sparse(points, padded, S, H, W, q, top_p)
            for i, f in enumerate(res.flops):
                flops[:, 1 + 3 * b + i] = f
            points, padded, H, W = res.points, res.padded, H // 2, W // 2
            results.append(res)
        C = padded.shape[1]
        x = padded.new_zeros(S * H * W, C).index_copy(0, points, padded[:-1])
        x = x.view(S, H, W, C).permute(0, 3, 1, 2)  # flatten in the dense (C, H, W) order
        return self.flatten(x.reshape(S, -1)), flops, results


# --------------------------------------------------------------------------- sequence + heads

class SequenceEncoder(nn.Module):
    """A Transformer over a modality's chunk / frame vectors with a CLS token (Sec. 4.2), then
    an FFN on the CLS output → that modality's logits."""

    def __init__(self, cfg: MESMConfig, max_len: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm = nn.LayerNorm(d)
        self.cls = nn.Parameter(torch.randn(d) * 0.02)
        self.position = nn.Parameter(torch.randn(max_len + 1, d) * 0.02)  # learned positions
        layer = nn.TransformerEncoderLayer(d, cfg.heads, cfg.ff_dim, cfg.transformer_dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.transformer_layers, norm=nn.LayerNorm(d),
                                             enable_nested_tensor=False)
        self.head = _ffn(cfg)

    def forward(self, vectors: Tensor, seq: "ModalitySequence") -> Tensor:
        B, N = seq.mask.shape
        x = vectors.new_zeros(B, N, vectors.shape[-1])
        x = x.index_put((seq.item, seq.position), self.norm(vectors))
        x = torch.cat([self.cls.expand(B, 1, -1), x], dim=1) + self.position[: N + 1]
        mask = torch.cat([seq.mask.new_zeros(B, 1), seq.mask], dim=1)
        return self.head(self.encoder(x, src_key_padding_mask=mask)[:, 0])


def _ffn(cfg: MESMConfig) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.ReLU(), nn.Dropout(cfg.dropout),
                         nn.Linear(cfg.d_model, cfg.num_classes))


@dataclass
class ModalitySequence:
    """One spatial modality of a batch after the (top_p-independent) dense stem."""

    stem: Tensor  # [S, C0, H, W]: every valid chunk / frame of the batch, item after item
    active: Tensor  # [S, H, W] bool: points covering real input (audio: unpadded frames)
    item: Tensor  # [S] batch index of each map
    position: Tensor  # [S] its place in the item's sequence
    mask: Tensor  # [B, N] True = pad


@dataclass
class MESMExtracted:
    """What :meth:`MESM.extract` returns: everything before the first attention layer."""

    text: Tensor  # [B, d] the text representation = the query q
    text_logits: Tensor  # [B, C]
    sequences: dict[str, ModalitySequence] = field(default_factory=dict)  # "spectrogram", "visual"


# --------------------------------------------------------------------------- the model

@register_model("mesm")
class MESM(nn.Module):
    """MESM (Fig. 2). forward(batch, top_p=None, record=False, modalities=None) → ModelOutput.

    batch (from :meth:`collate`): "sentence" [B, text_dim]; "chunks" [B, N, n_mels, 32] float,
    "chunk_mask" [B, N] (True = pad), "chunk_frames" [B, N] long (real frames per chunk);
    "faces" [B, F, size, size, 3] uint8, "face_mask" [B, F] (F may be 0).
    """

    Config = MESMConfig
    model_name = "mesm"
    inputs: ClassVar[tuple[str, ...]] = ("audio", "sentence", "faces")
    sparse: ClassVar[bool] = True  # FE2E: False

    def __init__(self, config: MESMConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or MESMConfig()
        d = cfg.d_model
        # Text branch: the frozen MiniLM CLS → projection (the query q of eq. 1) → FFN.
        self.text_proj = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.text_dim, d), nn.LayerNorm(d))
        self.text_head = _ffn(cfg)
        self.cnns = nn.ModuleDict()
        self.encoders = nn.ModuleDict()
        if "A" in cfg.modalities:
            self.cnns["spectrogram"] = SparseCNN(1, (cfg.n_mels, CHUNK_FRAMES), cfg, self.sparse)
            self.encoders["spectrogram"] = SequenceEncoder(cfg, cfg.max_chunks)
        if "V" in cfg.modalities:
            self.cnns["visual"] = SparseCNN(3, (cfg.face_size, cfg.face_size), cfg, self.sparse)
            self.encoders["visual"] = SequenceEncoder(cfg, cfg.max_faces)
        # ω of the weighted sum of the modalities' classification scores (Sec. 4.2).
        self.modality_weights = nn.Parameter(torch.zeros(len(cfg.modalities)))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.config.labels)

    @property
    def modality_names(self) -> list[str]:
        return [MODALITY_NAMES[m] for m in self.config.modalities]

    # ----------------------------------------------------------------- batching

    @classmethod
    def collate(cls, items: list[Features], config: MESMConfig, device: torch.device | str = "cpu"
                ) -> dict[str, Tensor]:
        """Features → batch: mel chunks (made here), face crops, the MiniLM CLS vectors."""
        if not items:
            raise InputError("collate needs at least one utterance.")
        B = len(items)
        sentence = []
        for f in items:
            vec = f.extra.get("sentence")
            if vec is None:
                raise InputError("MESM needs the transcript's sentence vector (feats.extra['sentence']).")
            vec = np.asarray(vec, dtype=np.float32).reshape(-1)
            if vec.shape[0] != config.text_dim:
                raise InputError(f"The sentence vector has {vec.shape[0]} values; this model expects "
                                 f"{config.text_dim}. Was it made by the text encoder the model was trained on?")
            sentence.append(torch.from_numpy(vec))
        batch = {"sentence": torch.stack(sentence)}
        if "A" in config.modalities:
            chunks = [_utterance_chunks(f.audio, config) for f in items]
            N = max(c.shape[0] for c, _ in chunks)
            batch["chunks"] = torch.zeros(B, N, config.n_mels, CHUNK_FRAMES)
            batch["chunk_frames"] = torch.zeros(B, N, dtype=torch.long)
            for i, (c, frames) in enumerate(chunks):
                batch["chunks"][i, : c.shape[0]] = c
                batch["chunk_frames"][i, : c.shape[0]] = frames
            batch["chunk_mask"] = batch["chunk_frames"] == 0
        if "V" in config.modalities:
            faces = [_utterance_faces(f, config) for f in items]
            Fmax = max(x.shape[0] for x in faces)
            s = config.face_size
            batch["faces"] = torch.zeros(B, Fmax, s, s, 3, dtype=torch.uint8)
            batch["face_mask"] = torch.ones(B, Fmax, dtype=torch.bool)
            for i, x in enumerate(faces):
                batch["faces"][i, : x.shape[0]] = x
                batch["face_mask"][i, : x.shape[0]] = False
        return {k: v.to(device) for k, v in batch.items()}

    def axis_labels(self, feats: Features) -> dict[str, AxisLabels]:
        """Labels for one utterance: chunks, face frames, and every block's map points."""
        cfg = self.config
        out: dict[str, AxisLabels] = {}
        if "A" in cfg.modalities:
            n = _chunk_count(len(feats.audio), cfg)
            start = np.arange(n) * CHUNK_SECONDS
            end = np.minimum(start + CHUNK_SECONDS, max(feats.duration, 1e-9))
            out["spectrogram"] = AxisLabels("chunks", [f"{a:.1f}–{b:.2f} s" for a, b in zip(start, end)],
                                            start, end)
        if "V" in cfg.modalities:
            start, step = _face_times(feats, cfg)
            out["visual"] = AxisLabels("frames", [f"{t:.2f} s" for t in start], start, start + step)
        for name, cnn in self.cnns.items():
            for b, (H, W) in enumerate(cnn.map_shapes):
                rc = np.stack(np.divmod(np.arange(H * W), W), axis=1)
                out[f"{name}_map{b}"] = AxisLabels("patches", [f"({r}, {c})" for r, c in rc], coords=rc)
        return out

    # ----------------------------------------------------------------- forward

    def forward(self, batch: dict[str, Tensor] | None, keep_ratio: Any = None, top_p: float | None = None,
                record: bool = False, extracted: MESMExtracted | None = None,
                modalities: str | None = None) -> ModelOutput:
        """keep_ratio is not a MESM knob (ignored). top_p: nucleus p (None: the config's; ≥ 1
        keeps every point). modalities: a subset of the config's ("T", "TA", ...) to use.
        extracted: :meth:`extract`'s output for this batch (then ``batch`` may be None)."""
        mods = self._modalities(modalities)
        p = self.config.top_p if top_p is None else _check_top_p(top_p)
        if extracted is None:
            if batch is None:
                raise InputError("forward needs a batch (or the output of extract()).")
            extracted = self.extract(batch, modalities=mods)
        t = extracted.text
        B = t.shape[0]
        logits_m = {"text": extracted.text_logits}
        present = {"text": torch.ones(B, dtype=torch.bool, device=t.device)}
        raws: list[RawAttention] = []
        flops, flops_dense, layer_names = [], [], []
        map_shapes: dict[str, tuple[int, int]] = {}
        padding_masks: dict[str, Tensor] = {}
        for name in (MODALITY_NAMES[m] for m in mods if m != "T"):
            seq = extracted.sequences.get(name)
            if seq is None:
                raise InputError(f"The extracted features have no {name} part; run extract() with it.")
            cnn = self.cnns[name]
            f_item = t.new_zeros(B, len(cnn.layer_names), dtype=torch.float64)
            fd_item = f_item.clone()
            padding_masks[name] = seq.mask
            present[name] = ~seq.mask.all(dim=1)
            if seq.item.numel() == 0:  # no item of the batch has this modality
                logits_m[name] = t.new_zeros(B, self.config.num_classes)
            else:
                vectors, f_seq, results = cnn(seq.stem, seq.active, t.index_select(0, seq.item), p)
                logits_m[name] = self.encoders[name](vectors, seq)
                f_item.index_add_(0, seq.item, f_seq)
                fd_item.index_add_(0, seq.item, cnn.dense_flops(len(seq.item), t.device))
                for b, res in enumerate(results):
                    rname = f"{name}.attention{b}"
                    map_shapes[rname] = cnn.map_shapes[b]
                    if record:
                        raws.append(self._raw(rname, name, b, res, seq, p))
            flops.append(f_item)
            flops_dense.append(fd_item)
            layer_names += [f"{name}.{n}" for n in cnn.layer_names]

        # Weighted sum of the modalities' classification scores (Sec. 4.2), over those present.
        names = self.modality_names
        used = torch.tensor([m in mods for m in self.config.modalities], device=t.device)
        avail = torch.stack([present.get(n, torch.zeros(B, dtype=torch.bool, device=t.device)) for n in names], 1)
        avail &= used
        w = torch.softmax(self.modality_weights.masked_fill(~avail, float("-inf")), dim=-1)  # [B, M]
        stacked = torch.stack([logits_m.get(n, t.new_zeros(B, self.config.num_classes)) for n in names], 1)
        logits = (w[..., None] * stacked).sum(1)

        item_extras: dict[str, Tensor] = {
            "modality_weights": w.detach(),
            "modality_probs": torch.softmax(stacked.detach(), -1) * avail[..., None],
        }
        if flops:
            item_extras["flops"] = torch.cat(flops, 1)
            item_extras["flops_dense"] = torch.cat(flops_dense, 1)
        extras: dict[str, Any] = {
            "padding_masks": padding_masks,
            "item_extras": item_extras,
            "model_extras": {
                "modalities": [MODALITY_NAMES[m] for m in mods],
                "modality_order": names,
                "fusion_weights": torch.softmax(self.modality_weights.detach(), 0),
                "flops_layers": layer_names,
                "map_shapes": map_shapes,
                "top_p": p if self.sparse else None,
                "sparse": self.sparse,
                "labels": list(self.labels),
            },
        }
        return ModelOutput(logits=logits, probs=torch.softmax(logits, -1), attentions=raws, extras=extras)

    def extract(self, batch: dict[str, Tensor], record: bool = False, modalities: str | None = None
                ) -> MESMExtracted:
        """The top_p-independent first stage: text branch and each modality's dense stem."""
        mods = self._modalities(modalities)
        cfg = self.config
        sentence = _tensor(batch, "sentence", 2)
        if sentence.shape[1] != cfg.text_dim:
            raise InputError(f"sentence vectors must be [B, {cfg.text_dim}]; got {tuple(sentence.shape)}.")
        B = sentence.shape[0]
        t = self.text_proj(sentence)
        out = MESMExtracted(text=t, text_logits=self.text_head(t))
        if "A" in mods:
            chunks = _tensor(batch, "chunks", 4)
            frames = _tensor(batch, "chunk_frames", 2)
            mask = batch.get("chunk_mask", frames == 0)
            shape_ok = chunks.shape[0] == B and chunks.shape[2:] == (cfg.n_mels, CHUNK_FRAMES)
            if not shape_ok or frames.shape != chunks.shape[:2]:
                raise InputError(f"chunks must be [{B}, N, {cfg.n_mels}, {CHUNK_FRAMES}] with chunk_frames [B, N]; "
                                 f"got {tuple(chunks.shape)} and {tuple(frames.shape)}.")
            if chunks.shape[1] > cfg.max_chunks:
                raise InputError(f"At most {cfg.max_chunks} chunks per utterance; got {chunks.shape[1]}.")
            if bool(mask.all(dim=1).any()):
                raise InputError("An utterance has no audio chunk: it is empty or too short to analyse.")
            seq = _sequence(mask)
            cnn = self.cnns["spectrogram"]
            stem = cnn.run_stem(chunks[seq.item, seq.position].unsqueeze(1))
            # a stem point (2 frames wide) is active when it covers at least one real frame
            W0 = stem.shape[-1]
            first_frame = torch.arange(W0, device=stem.device) * (CHUNK_FRAMES // W0)
            cols = first_frame[None, :] < frames[seq.item, seq.position][:, None]
            seq.stem, seq.active = stem, cols[:, None, :].expand(-1, stem.shape[-2], -1)
            out.sequences["spectrogram"] = seq
        if "V" in mods:
            faces = _tensor(batch, "faces", 5)
            mask = batch.get("face_mask")
            s = cfg.face_size
            if faces.shape[0] != B or faces.shape[2:] != (s, s, 3) or mask is None or mask.shape != faces.shape[:2]:
                raise InputError(f"faces must be [{B}, F, {s}, {s}, 3] with face_mask [B, F]; got "
                                 f"{tuple(faces.shape)}.")
            if faces.shape[1] > cfg.max_faces:
                raise InputError(f"At most {cfg.max_faces} face frames per utterance; got {faces.shape[1]}.")
            seq = _sequence(mask)
            cnn = self.cnns["visual"]
            x = faces[seq.item, seq.position].permute(0, 3, 1, 2).float()
            if faces.dtype == torch.uint8:
                x = x / 127.5 - 1.0
            seq.stem = cnn.run_stem(x)
            seq.active = torch.ones(seq.stem.shape[0], *seq.stem.shape[2:], dtype=torch.bool, device=x.device)
            out.sequences["visual"] = seq
        return out

    # ----------------------------------------------------------------- helpers

    def flops(self, batch: dict[str, Tensor], top_p: float | None = None, modalities: str | None = None
              ) -> dict[str, Any]:
        """FLOPs (2 × MACs) of the feature-extraction CNNs for a whole batch, and FE2E's."""
        with torch.no_grad():
            return self.count_flops(self(batch, top_p=top_p, modalities=modalities))

    @staticmethod
    def count_flops(output: ModelOutput) -> dict[str, Any]:
        """Sum an output's per-item FLOPs: {"flops", "dense_flops", "ratio", "per_layer"}."""
        extras = output.extras["item_extras"]
        if "flops" not in extras:
            return {"flops": 0.0, "dense_flops": 0.0, "ratio": float("nan"), "per_layer": {}}
        f, fd = extras["flops"].sum(0), extras["flops_dense"].sum(0)
        names = output.extras["model_extras"]["flops_layers"]
        total, dense = float(f.sum()), float(fd.sum())
        return {"flops": total, "dense_flops": dense, "ratio": total / dense if dense else float("nan"),
                "per_layer": {n: (float(a), float(b)) for n, a, b in zip(names, f, fd)}}

    def _modalities(self, modalities: str | None) -> str:
        if modalities is None:
            return self.config.modalities
        if modalities not in MODALITY_SETS or any(m not in self.config.modalities for m in modalities):
            raise InputError(f"modalities must be one of {MODALITY_SETS} within this model's "
                             f"{self.config.modalities!r}; got {modalities!r}.")
        return modalities

    def _raw(self, rname: str, name: str, b: int, res: BlockResult, seq: ModalitySequence, p: float
             ) -> RawAttention:
        """Scatter a block's [S, H·W] maps into the batch layout [B, 1, N, H·W]."""
        B, N = seq.mask.shape
        HW = res.keep.shape[1]
        weights = res.weights.new_zeros(B, N, HW).index_put_((seq.item, seq.position), res.weights * res.keep)
        keep = res.keep.new_zeros(B, N, HW).index_put_((seq.item, seq.position), res.keep)
        return RawAttention(name=rname, kind="nucleus", query_modality=name, key_modality=f"{name}_map{b}",
                            weights=weights[:, None], keep=keep[:, None], top_p=p)


@register_model("fe2e")
class FE2E(MESM):
    """FE2E, the fully end-to-end baseline (Sec. 4.2): MESM's network with dense CNN blocks and
    no cross-modal attention / nucleus sampling (top_p is ignored; nothing is recorded)."""

    model_name = "fe2e"
    sparse: ClassVar[bool] = False


# --------------------------------------------------------------------------- input helpers

def _check_top_p(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"top_p must be a number in (0, 1] (≥ 1 keeps every point); got {value!r}.")
    return float(value)


def _tensor(batch: dict[str, Tensor], key: str, dim: int) -> Tensor:
    x = batch.get(key)
    if not isinstance(x, Tensor) or x.dim() != dim:
        raise InputError(f"The model input needs a {dim}-D {key!r} tensor (use MESM.collate).")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise InputError(f"The {key!r} input contains NaN or infinite values.")
    return x


def _sequence(mask: Tensor) -> ModalitySequence:
    """The (item, position) of every valid entry of a [B, N] padding mask, item after item."""
    item, position = (~mask).nonzero(as_tuple=True)
    return ModalitySequence(stem=mask.new_zeros(0), active=mask.new_zeros(0), item=item,
                            position=position, mask=mask)


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
