"""Key-sparse attention (KS-Transformer, Chen et al., ICASSP 2022) and nucleus masks.

Paper: "Key-Sparse Transformer for Multimodal Speech Emotion Recognition", sec. 2.1.

    W    = softmax(Q Kᵀ / √d_Q)                        (eq. 1)
    s_z  = Σ_i W[i, z]          column sum: the importance of key z (Fig. 3)
    M_z  = 1 if s_z ≥ threshold else 0                 (eq. 3, threshold = k-th largest s_z)
    attn = (W ⊙ M) × V                                 (eq. 2 on the sparsified weights)

Kept weights are *not* renormalised (as in the paper and its released code). Here the
paper's k is a ratio (``keep_ratio``): per (batch item, head) n = max(1, ⌊keep_ratio·L⌋)
keys are kept, L being that item's number of valid (non-padding) keys.

Everything is vectorised over batch and heads; ``keep_ratio >= 1`` takes a fast path that
is exactly vanilla attention.

Maps at display resolution. Inside :func:`maps_pooled_to` (the analysis pipeline, for a clip
too long to explain), the attention modules return each head's map max-pooled to at most that
many positions per axis (``trace.AttentionRecord.pool``), built a block of query rows at a time:
the full map is never held (a 60 s clip's would be ~300 MB per layer).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ser_core.errors import InputError

__all__ = [
    "AttentionInfo",
    "KeySparseMultiheadAttention",
    "KeySparseResult",
    "keep_counts",
    "key_sparse_attention",
    "key_sparse_attention_with_scores",
    "maps_pooled_to",
    "nucleus_mask",
    "pool_blocks",
    "pool_map",
]

# A tiny slack so that e.g. keep_ratio=0.7, L=10 gives n=7 even though 0.7*10 is
# 7.000000000000001 or 0.29*100 is 28.999999999999996 in floating point.
_FLOOR_EPS = 1e-9


class KeySparseResult(NamedTuple):
    """What :func:`key_sparse_attention_with_scores` returns."""

    out: Tensor  # [B, H, Tq, D]
    weights: Tensor | None  # [B, H, Tq, Tk] after the top-k key mask (None: not asked for)
    keep: Tensor  # [B, H, Tk] bool, False at padding
    key_scores: Tensor  # [B, H, Tk] column sums of W over (valid) queries; 0 at padding


def keep_counts(valid_keys: Tensor, keep_ratio: float) -> Tensor:
    """n = max(1, ⌊keep_ratio·L⌋) per item, L = number of valid keys (int64, same shape)."""
    n = torch.floor(valid_keys.to(torch.float64) * float(keep_ratio) + _FLOOR_EPS).to(torch.int64)
    return n.clamp(min=1)


def _check_inputs(
    q: Tensor, k: Tensor, v: Tensor, keep_ratio: float,
    key_padding_mask: Tensor | None, query_padding_mask: Tensor | None,
) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise InputError(
            f"key_sparse_attention expects q, k, v shaped [B, H, T, D]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}."
        )
    if k.shape[:3] != v.shape[:3] or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise InputError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} do not agree on batch, "
            "heads, key length or head size."
        )
    if not isinstance(keep_ratio, (int, float)) or not math.isfinite(keep_ratio) or keep_ratio <= 0:
        raise InputError(f"keep_ratio must be a number > 0 (1 keeps every key); got {keep_ratio!r}.")
    B, _, Tq, _ = q.shape
    Tk = k.shape[2]
    if Tk == 0:
        raise InputError("key_sparse_attention needs at least one key position (Tk = 0).")
    for name, mask, T in (("key_padding_mask", key_padding_mask, Tk), ("query_padding_mask", query_padding_mask, Tq)):
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (B, T)):
            raise InputError(f"{name} must be a bool tensor shaped [{B}, {T}] (True = pad); got "
                             f"{mask.dtype} {tuple(mask.shape)}.")


# --------------------------------------------------------------------------- maps at display resolution

_MAP_CELLS: contextvars.ContextVar[int | None] = contextvars.ContextVar("attention_map_cells", default=None)


@contextlib.contextmanager
def maps_pooled_to(cells: int | None):
    """Within this block (this thread), :class:`KeySparseMultiheadAttention` returns maps larger
    than ``cells`` positions on an axis max-pooled to at most ``cells`` (None: full maps)."""
    token = _MAP_CELLS.set(cells)
    try:
        yield
    finally:
        _MAP_CELLS.reset(token)


def pool_blocks(tq: int, tk: int, cells: int) -> tuple[int, int]:
    """Block sizes that bring a tq × tk map to at most ``cells`` positions per axis."""
    return max(1, -(-tq // cells)), max(1, -(-tk // cells))


def _max_over_groups(x: Tensor, dim: int, size: int) -> Tensor:
    """Max over consecutive groups of ``size`` along ``dim`` (the last group may be shorter).
    The same values as ``F.max_pool2d(..., ceil_mode=True)``, which was ~30× slower on CPU for the
    blocked route's row groups (a 4 × 240 × 3000 block, rows by 8: 6.4 ms against 0.2 ms)."""
    n = x.shape[dim]
    full = n // size * size
    parts = [x.narrow(dim, 0, full).unflatten(dim, (full // size, size)).amax(dim + 1 if dim >= 0 else dim)] \
        if full else []
    if full < n:
        parts.append(x.narrow(dim, full, n - full).amax(dim, keepdim=True))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def pool_map(weights: Tensor, block: tuple[int, int]) -> Tensor:
    """[..., Tq, Tk] → the max over blocks of block[0] × block[1] (edge blocks partial)."""
    if block[1] > 1:
        weights = _max_over_groups(weights, -1, block[1])
    if block[0] > 1:
        weights = _max_over_groups(weights, -2, block[0])
    return weights


def _pooled_attention(q: Tensor, k: Tensor, v: Tensor, keep_ratio: float, key_padding_mask: Tensor | None,
                      key_valid: Tensor | None, query_padding_mask: Tensor | None,
                      block: tuple[int, int]) -> KeySparseResult:
    """Inference whose maps are kept max-pooled over ``block``: W is never whole.

    One blocked pass gives the key scores and W pooled over groups of block[0] query rows
    (still one column per key). The key mask M is per column and W ≥ 0, so the max of W ⊙ M
    over a block is the max over the block's kept columns of that row-pooled map: M is applied
    there, then the columns are pooled. With every key kept (vanilla), out = W V is taken in the
    same pass; otherwise M needs every score first, and out = (W ⊙ M) V comes from torch's fused
    kernel on the masked values (as in training). The same values as the full route."""
    if keep_ratio >= 1:  # every valid key kept: out = W V from the same pass
        rows, scores, out = _weights_and_scores(q, k, key_padding_mask, key_valid, query_padding_mask,
                                                pool_rows=block[0], values=v)
        keep = _valid_keep(key_valid, *scores.shape, q.device)
    else:
        rows, scores = _weights_and_scores(q, k, key_padding_mask, key_valid, query_padding_mask, pool_rows=block[0])
        keep = _top_keys(scores, key_valid, keep_ratio)
        attn_mask = None if key_valid is None else key_valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v * keep.to(v.dtype)[..., None], attn_mask=attn_mask)
    return KeySparseResult(out, pool_map(rows.mul_(keep.to(v.dtype)[:, :, None, :]), (1, block[1])), keep, scores)


def key_sparse_attention_with_scores(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    keep_ratio: float,
    key_padding_mask: Tensor | None = None,
    query_padding_mask: Tensor | None = None,
    *,
    dropout_p: float = 0.0,
    need_scores: bool = True,
    need_weights: bool = True,
    pool_cells: int | None = None,
) -> KeySparseResult:
    """Key-sparse attention that also returns the key scores s_z (see module docstring).

    The returned weights and key scores are for inspection: they carry no gradient (the
    gradient reaches q, k and v through ``out``). dropout_p: dropout on the weights before
    ``× V`` (pass 0 outside training; the returned weights are the un-dropped ones).
    need_scores / need_weights = False skip building the key scores (then all zeros, on the
    keep_ratio ≥ 1 path) / the weights (then None): training needs only out and keep.
    pool_cells: at inference, return maps bigger than this many positions on an axis max-pooled
    to at most that many (:func:`pool_blocks`, :func:`_pooled_attention`).
    """
    _check_inputs(q, k, v, keep_ratio, key_padding_mask, query_padding_mask)
    # A mask with no padding at all (e.g. one utterance) is the same as none, and cheaper.
    if key_padding_mask is not None and not bool(key_padding_mask.any()):
        key_padding_mask = None
    if query_padding_mask is not None and not bool(query_padding_mask.any()):
        query_padding_mask = None
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    key_valid = None if key_padding_mask is None else ~key_padding_mask  # [B, Tk]
    all_have_keys = key_valid is None or bool(key_valid.any(dim=-1).all())

    needs_graph = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if pool_cells is not None and need_weights and not needs_graph and dropout_p == 0 and all_have_keys:
        block = pool_blocks(Tq, Tk, pool_cells)
        if block != (1, 1):
            return _pooled_attention(q, k, v, keep_ratio, key_padding_mask, key_valid, query_padding_mask, block)
    if keep_ratio >= 1 and all_have_keys:
        # Fast path: vanilla attention (eq. 1–2), every valid key kept.
        keep = _valid_keep(key_valid, B, H, Tk, q.device)
        if need_weights and not needs_graph and dropout_p == 0:
            # Inference with the maps asked for: W is built anyway, so out = W V from it
            # (a 60 s clip's fused kernel would compute the same softmax a second time).
            W, scores = _weights_and_scores(q, k, key_padding_mask, key_valid, query_padding_mask)
            return KeySparseResult(torch.matmul(W, v), W, keep, scores)
        # Otherwise torch's fused kernel computes out (and its gradient); the maps are built
        # without a graph only if asked.
        attn_mask = None if key_valid is None else key_valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        if not (need_weights or need_scores):
            return KeySparseResult(out, None, keep, torch.zeros(B, H, Tk, dtype=q.dtype, device=q.device))
        with torch.no_grad():
            W, scores = _weights_and_scores(q, k, key_padding_mask, key_valid, query_padding_mask,
                                            keep_weights=need_weights)
        return KeySparseResult(out, W, keep, scores)

    if all_have_keys and not need_weights:
        # Training: only the ranking is needed, so W is not kept (on long sequences it is never
        # whole: the scores are summed a cache-sized block of query rows at a time).
        with torch.no_grad():
            _, scores = _weights_and_scores(q, k, key_padding_mask, key_valid, query_padding_mask,
                                            keep_weights=False)
            keep = _top_keys(scores, key_valid, keep_ratio)
        attn_mask = None if key_valid is None else key_valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v * keep.to(v.dtype)[..., None], attn_mask=attn_mask,
                                             dropout_p=dropout_p)
        return KeySparseResult(out, None, keep, scores)

    if all_have_keys:
        # Eq. 1–3 without a graph: W only ranks the keys (eq. 3 is a hard choice).
        with torch.no_grad():
            W, scores = _weights_and_scores(q, k, key_padding_mask, key_valid, query_padding_mask)
            keep = _top_keys(scores, key_valid, keep_ratio)
            keep_f = keep.to(v.dtype)
        # Eq. 2 on M ⊙ W (not renormalised). (W ⊙ M_columns) V = W (M V): masking the Tk rows
        # of V gives the same values and gradients as masking the Tq×Tk weights, so torch's
        # fused attention kernel computes out and its backward (q, k and v all get gradient).
        if not needs_graph and dropout_p == 0:
            # Inference: W is already there, so out = (M ⊙ W) V directly (no second QKᵀ).
            weights = W.mul_(keep_f[:, :, None, :])
            return KeySparseResult(torch.matmul(weights, v), weights if need_weights else None, keep, scores)
        attn_mask = None if key_valid is None else key_valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v * keep_f[..., None], attn_mask=attn_mask,
                                             dropout_p=dropout_p)
        weights = W.mul_(keep_f[:, :, None, :]) if need_weights else None  # W has no graph
        return KeySparseResult(out, weights, keep, scores)

    # Some item has no valid key at all: the explicit form, which stays finite on such rows.
    W = _softmax_weights(q, k, key_padding_mask)
    scores = _column_sums(W, key_valid, query_padding_mask)
    if keep_ratio >= 1:
        keep = _valid_keep(key_valid, B, H, Tk, q.device)
    else:
        keep = _top_keys(scores, key_valid, keep_ratio)
    keep_f = keep.to(v.dtype)
    Wd = F.dropout(W, p=dropout_p) if dropout_p > 0 else W
    out = torch.matmul(Wd, v * keep_f[..., None])
    weights = None
    if need_weights:
        with torch.no_grad():
            weights = W * keep_f[:, :, None, :]
    return KeySparseResult(out, weights, keep, scores)


def _softmax_weights(q: Tensor, k: Tensor, key_padding_mask: Tensor | None) -> Tensor:
    """W = softmax(Q Kᵀ / √d) over the valid keys (eq. 1), [B, H, Tq, Tk].

    One batched GEMM with the scale as its alpha. Padding keys get a huge negative *finite*
    bias (the GEMM's C term) rather than -inf, so that a row with no valid key at all gives
    finite numbers instead of NaN (such rows are zeroed by the keep mask).
    """
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    q3 = q.reshape(B * H, Tq, D)
    kT3 = k.reshape(B * H, Tk, D).transpose(1, 2)
    if key_padding_mask is None:
        logits = torch.bmm(q3 * (D ** -0.5), kT3)
    else:
        bias = _key_bias(key_padding_mask, q.dtype)[:, None, None, :].expand(B, H, 1, Tk).reshape(B * H, 1, Tk)
        logits = torch.baddbmm(bias, q3, kT3, alpha=D ** -0.5)
    return torch.softmax(logits, dim=-1).view(B, H, Tq, Tk)


def _key_bias(key_padding_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, Tk]: 0 at valid keys, a huge negative *finite* number at padding (added to the logits)."""
    bias = torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device)
    return bias.masked_fill_(key_padding_mask, torch.finfo(dtype).min / 2)


#: Maps at least this big (Tq·Tk, per head) are built a block of query rows at a time.
BLOCKED_FROM = 1 << 20
#: Elements of W in one block of query rows (about 1 MB: the block stays in the core's cache while
#: its softmax and column sums are taken, instead of five passes over a whole 300 MB map).
BLOCK_ELEMENTS = 1 << 18
#: Shorter maps whose weights are not kept (training) are taken this many elements of whole
#: heads at a time (a training batch's W for every head at once is slower: out of cache).
HEAD_GROUP_ELEMENTS = 1 << 21


def _weights_and_scores(
    q: Tensor, k: Tensor, key_padding_mask: Tensor | None, key_valid: Tensor | None,
    query_padding_mask: Tensor | None, keep_weights: bool = True, pool_rows: int | None = None,
    values: Tensor | None = None,
) -> tuple[Tensor | None, Tensor] | tuple[Tensor | None, Tensor, Tensor]:
    """(W of eq. 1 or None, its key scores s_z of :func:`_column_sums`), [B,H,Tq,Tk], [B,H,Tk].

    Short maps that are kept take the whole-map route (:func:`_softmax_weights`, one GEMM).
    Otherwise W is computed in cache-sized blocks: logits, softmax and the block's share of the
    column sums while the block is in cache, the block copied into W only when ``keep_weights``.
    A block is a group of whole heads for short maps (:data:`HEAD_GROUP_ELEMENTS`), and from
    :data:`BLOCKED_FROM` elements per head (e.g. 20 s of speech frames against themselves) a
    block of one head's query rows (:data:`BLOCK_ELEMENTS`). Same values as the whole-map route
    (the same GEMM and softmax per row); a 60 s clip's audio self-attention is about three times
    quicker, and without the weights (training, the deletion test) W is never whole.
    ``pool_rows``: instead of W, its max over groups of that many query rows, [B,H,⌈Tq/pool_rows⌉,Tk]
    (blocks of whole groups of one head's rows). ``values`` (v, [B,H,Tk,Dv]; blocked routes): also
    return out = W V [B,H,Tq,Dv], taken from each block while it is in cache (vanilla attention,
    every key kept: no second pass over Q Kᵀ)."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    long = Tq * Tk >= BLOCKED_FROM or pool_rows is not None
    if keep_weights and not long:
        W = _softmax_weights(q, k, key_padding_mask)
        return W, _column_sums(W, key_valid, query_padding_mask)
    BH = B * H
    q3 = q.reshape(BH, Tq, D) * D ** -0.5  # scaled once (as _softmax_weights does), not every block
    kT3 = k.reshape(BH, Tk, D).transpose(1, 2)
    bias = qv = None  # per (item, head) row: [BH, 1, Tk] / [BH, 1, Tq]
    if key_padding_mask is not None:
        bias = _key_bias(key_padding_mask, q.dtype)[:, None, None, :].expand(B, H, 1, Tk).reshape(BH, 1, Tk)
    if query_padding_mask is not None:
        qv = (~query_padding_mask).to(q.dtype)[:, None, None, :].expand(B, H, 1, Tq).reshape(BH, 1, Tq)
    pr = pool_rows or 1
    W = torch.empty(BH, -(-Tq // pr), Tk, dtype=q.dtype, device=q.device) if keep_weights else None
    scores = torch.zeros(BH, Tk, dtype=q.dtype, device=q.device)
    v3 = None if values is None else values.reshape(BH, Tk, values.shape[-1])
    out = None if values is None else torch.empty(BH, Tq, values.shape[-1], dtype=values.dtype, device=values.device)
    heads, rows = (1, max(1, BLOCK_ELEMENTS // Tk)) if long else (max(1, HEAD_GROUP_ELEMENTS // (Tq * Tk)), Tq)
    rows = max(pr, rows // pr * pr)  # whole groups of rows in a block
    with torch.no_grad():
        for g in range(0, BH, heads):
            h = slice(g, min(BH, g + heads))
            for i in range(0, Tq, rows):
                r = slice(i, min(Tq, i + rows))
                if bias is None:
                    logits = torch.bmm(q3[h, r], kT3[h])
                else:
                    logits = torch.baddbmm(bias[h], q3[h, r], kT3[h])
                w = torch.softmax(logits, dim=-1)
                scores[h] += w.sum(dim=-2) if qv is None else torch.bmm(qv[h, :, r], w).squeeze(-2)
                if out is not None:
                    torch.bmm(w, v3[h], out=out[h, r])
                if W is not None and pr > 1:
                    W[h, i // pr:(r.stop + pr - 1) // pr] = _max_over_groups(w, -2, pr)
                elif W is not None:
                    W[h, r] = w
    scores = scores.view(B, H, Tk)
    if key_valid is not None:
        scores = scores * key_valid[:, None, :]
    W = None if W is None else W.view(B, H, -1, Tk)
    return (W, scores) if out is None else (W, scores, out.view(B, H, Tq, -1))


def _column_sums(W: Tensor, key_valid: Tensor | None, query_padding_mask: Tensor | None) -> Tensor:
    """s_z = Σ_i W[i, z] over the valid queries (Fig. 3), [B, H, Tk]; 0 at padding keys."""
    with torch.no_grad():
        if query_padding_mask is None:
            s = W.sum(dim=-2)
        else:
            qv = (~query_padding_mask).to(W.dtype)[:, None, None, :]  # [B,1,1,Tq]
            s = torch.matmul(qv, W).squeeze(-2)
        if key_valid is not None:
            s = s * key_valid[:, None, :]
    return s


def _valid_keep(key_valid: Tensor | None, B: int, H: int, Tk: int, device: torch.device) -> Tensor:
    """keep = every valid key, [B, H, Tk]."""
    if key_valid is None:
        return torch.ones(B, H, Tk, dtype=torch.bool, device=device)
    return key_valid[:, None, :].expand(B, H, Tk).clone()


def _top_keys(scores: Tensor, key_valid: Tensor | None, keep_ratio: float) -> Tensor:
    """The top-k key mask M of eq. 3, per (item, head): s_z ≥ threshold, where threshold is the
    n-th largest valid score and n = max(1, ⌊keep_ratio·L⌋) with L the item's valid keys.

    Vectorised: one topk for the largest n in the batch, then a gather at each item's n-1.
    Ties with the n-th largest are kept too. Padding scores rank as -inf: never chosen.
    """
    B, H, Tk = scores.shape
    if key_valid is None:
        L = torch.full((B,), Tk, dtype=torch.int64, device=scores.device)
        ranked = scores
    else:
        L = key_valid.sum(dim=-1)
        ranked = scores.masked_fill(~key_valid[:, None, :], float("-inf"))
    n = keep_counts(L, keep_ratio)
    top = torch.topk(ranked, int(n.max()), dim=-1, largest=True, sorted=True).values  # [B,H,n_max]
    threshold = torch.gather(top, -1, (n - 1)[:, None, None].expand(B, H, 1))  # [B,H,1]
    keep = ranked >= threshold
    if key_valid is not None:
        keep &= key_valid[:, None, :]  # an item with L = 0 has threshold -inf: keep nothing
    return keep


def key_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    keep_ratio: float,
    key_padding_mask: Tensor | None = None,
    query_padding_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Key-sparse attention → ``(out, weights, keep)`` (DESIGN.md's outside API).

    q [B,H,Tq,D], k/v [B,H,Tk,D]; masks [B,Tk] / [B,Tq] bool with True = pad. Returns out
    [B,H,Tq,D], weights [B,H,Tq,Tk] after the key mask (not renormalised), keep [B,H,Tk].
    Use :func:`key_sparse_attention_with_scores` to also get the key scores.
    """
    r = key_sparse_attention_with_scores(
        q, k, v, keep_ratio, key_padding_mask, query_padding_mask, need_scores=False
    )
    return r.out, r.weights, r.keep


def nucleus_mask(probs: Tensor, top_p: float) -> Tensor:
    """Nucleus (top-p) mask over the last dim: the smallest set of largest entries whose
    mass reaches top_p. Sorted descending, an entry is kept while the running sum *before*
    it is < top_p (so the entry that reaches top_p is kept too). top_p ≥ 1 keeps all.
    """
    if not isinstance(top_p, (int, float)) or not math.isfinite(top_p) or top_p <= 0:
        raise InputError(f"top_p must be a number in (0, 1] (1 keeps everything); got {top_p!r}.")
    if top_p >= 1:
        return torch.ones_like(probs, dtype=torch.bool)
    sorted_p, order = torch.sort(probs, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_p, dim=-1) - sorted_p
    keep_sorted = mass_before < top_p
    keep_sorted[..., 0] = True  # the largest entry always (also covers an all-zero row)
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


@dataclass
class AttentionInfo:
    """One attention layer's maps (detached), as a model records them."""

    weights: Tensor  # [B, H, Tq, Tk]
    key_scores: Tensor  # [B, H, Tk]
    keep: Tensor  # [B, H, Tk] bool


class KeySparseMultiheadAttention(nn.Module):
    """Multi-head key-sparse attention (self or cross), the attention of a KS-Transformer.

    Q comes from ``query``, K and V from ``key_value`` (the same tensor: "K and V are always
    the same in Transformer", sec. 2.1.2); ``key_value=None`` means self-attention.
    keep_ratio ≥ 1 makes it vanilla multi-head attention (eq. 1–2).
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by heads={heads}")
        self.d_model, self.heads, self.head_dim = d_model, heads, d_model // heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> Tensor:  # [B,T,d] -> [B,H,T,d/H]
        B, T, _ = x.shape
        return x.view(B, T, self.heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        query: Tensor,
        key_value: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        query_padding_mask: Tensor | None = None,
        keep_ratio: float = 1.0,
        need_weights: bool = True,
    ) -> tuple[Tensor, AttentionInfo | None]:
        """query [B,Tq,d], key_value [B,Tk,d] (None: self) → (out [B,Tq,d], AttentionInfo).

        need_weights=False (training) skips the maps and returns (out, None).
        """
        kv_in = query if key_value is None else key_value
        q = self._split(self.q_proj(query))
        k, v = (self._split(t) for t in self.kv_proj(kv_in).chunk(2, dim=-1))
        r = key_sparse_attention_with_scores(
            q, k, v, keep_ratio, key_padding_mask, query_padding_mask,
            dropout_p=self.dropout if self.training else 0.0,
            need_scores=need_weights, need_weights=need_weights, pool_cells=_MAP_CELLS.get(),
        )
        B, _, Tq, _ = r.out.shape
        out = self.out_proj(r.out.transpose(1, 2).reshape(B, Tq, self.d_model))
        if not need_weights:
            return out, None
        return out, AttentionInfo(r.weights.detach(), r.key_scores.detach(), r.keep)
