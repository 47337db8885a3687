"""MESM's cross-modal sparse CNN (Sec. 4.3 of Dai et al., NAACL 2021; see ``mesm.py``).

The per-modality feature extractor of :class:`ser_core.models.mesm.MESM`, in the order of
Fig. 2: the cross-modal attention layer (eq. 1–3), the submanifold sparse convolution it feeds
(Graham & van der Maaten 2017) on compact point lists, the cross-modal sparse CNN block (eq. 4,
two sparse VGG layers, sparse max-pool) and :class:`SparseCNN` (dense stem + N blocks +
flatten). ``sparse=False`` gives FE2E's dense CNN. The design, the straight-through training of
the attention and the FLOPs count are described in the docstring of ``mesm.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ser_core.attention import nucleus_mask

if TYPE_CHECKING:
    from ser_core.models.mesm import MESMConfig

__all__ = [
    "BlockResult",
    "CrossModalAttention",
    "CrossModalSparseBlock",
    "SparseCNN",
    "max_pool2x2",
    "neighbour_table",
    "submanifold_conv3x3",
]


# --------------------------------------------------------------------------- eq. 1–4

class CrossModalAttention(nn.Module):
    """The cross-modal attention layer (Sec. 4.3.1, eq. 1–3) over the active points of S maps.

    Returns M_i [S, H·W] (softmax over each map's active points; 0 elsewhere) and M_ns [S, H·W]
    (the nucleus mask, a subset of the active points). Eq. 4 is applied by the caller.
    """

    def __init__(self, channels: int, query_dim: int, k: int, standardize: bool = False) -> None:
        super().__init__()
        # standardize (not in the paper): eq. 1 reads each map's features standardised over its
        # active points, per channel, so a point scores by how it differs from the rest of its map,
        # not by how strong its features are (on faces they grow with the skin's brightness).
        self.standardize = standardize
        self.W_m = nn.Linear(channels, k)  # W_m, b_m: a 1×1 map over the channels
        self.W_q = nn.Linear(query_dim, k, bias=False)
        self.W_i = nn.Linear(k, 1, bias=False)  # b_i would cancel in the softmax over H×W

    def forward(self, values: Tensor, points: Tensor, seq: Tensor, S: int, HW: int, q: Tensor,
                top_p: float) -> tuple[Tensor, Tensor]:
        """values [P, C]: the features at the active points ``points`` (ascending flat indices
        s·H·W + row·W + col; ``seq`` = their s); q [S, d]: the text query of each map."""
        if self.standardize:
            values = standardized_per_map(values, seq, S)
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


def standardized_per_map(values: Tensor, seq: Tensor, S: int, eps: float = 1e-5) -> Tensor:
    """values [P, C] of the active points of S maps (``seq`` [P]: each point's map), each channel
    shifted and scaled to mean 0 and variance 1 over its map's active points."""
    counts = torch.bincount(seq, minlength=S).clamp_min(1).to(values.dtype)[:, None]  # [S, 1]
    mean = values.new_zeros(S, values.shape[1]).index_add(0, seq, values) / counts
    centred = values - mean.index_select(0, seq)
    var = values.new_zeros(S, values.shape[1]).index_add(0, seq, centred * centred) / counts
    return centred * torch.rsqrt(var + eps).index_select(0, seq)


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

    def __init__(self, in_channels: int, out_channels: int, query_dim: int, k: int, sparse: bool,
                 standardize: bool = False, explore: float = 0.0) -> None:
        super().__init__()
        self.attention = CrossModalAttention(in_channels, query_dim, k, standardize) if sparse else None
        # While training only (not in the paper): this share of the points eq. 3 drops is let through
        # as well, at random, so that the straight-through gradient also measures what they are worth.
        self.explore = explore
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
        if self.training and self.explore > 0:
            M_ns = M_ns | ((torch.rand(M_ns.shape, device=M_ns.device) < self.explore) & (M_i.detach() > 0))
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
            CrossModalSparseBlock(chans[i], chans[i + 1], cfg.d_model, cfg.attention_dim, sparse,
                                  cfg.attention_standardize, cfg.attention_explore)
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
