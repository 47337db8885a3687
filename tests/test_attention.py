"""Key-sparse attention (KS-Transformer eq. 1–3) and nucleus masks, against a plain loop
reference written from the paper, over many shapes, padding patterns and keep ratios."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ser_core.attention import (
    KeySparseMultiheadAttention,
    key_sparse_attention,
    key_sparse_attention_with_scores,
    nucleus_mask,
)
from ser_core.errors import InputError


def reference(q, k, v, keep_ratio, key_pad=None, query_pad=None):
    """Per item and head, straight from the paper: W over the valid keys (eq. 1), column sums
    over the valid queries, keep s_z ≥ n-th largest (eq. 3), W ⊙ M × V (eq. 2)."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    out = torch.zeros(B, H, Tq, v.shape[-1], dtype=q.dtype)
    weights = torch.zeros(B, H, Tq, Tk, dtype=q.dtype)
    keep = torch.zeros(B, H, Tk, dtype=torch.bool)
    scores = torch.zeros(B, H, Tk, dtype=q.dtype)
    for b in range(B):
        kv = [z for z in range(Tk) if key_pad is None or not key_pad[b, z]]
        qv = [i for i in range(Tq) if query_pad is None or not query_pad[b, i]]
        if not kv:
            continue
        for h in range(H):
            W = torch.softmax(q[b, h] @ k[b, h, kv].T / math.sqrt(D), dim=-1)
            s = W[qv].sum(0)
            if keep_ratio >= 1:
                m = torch.ones(len(kv), dtype=torch.bool)
            else:
                n = max(1, math.floor(keep_ratio * len(kv) + 1e-9))
                m = s >= sorted(s.tolist(), reverse=True)[n - 1]
            weights[b, h][:, kv] = W * m
            out[b, h] = (W * m) @ v[b, h, kv]
            keep[b, h, kv] = m
            scores[b, h, kv] = s
    return out, weights, keep, scores


def make(B, H, Tq, Tk, D=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, dtype=dtype) for T in (Tq, Tk, Tk)]


def padding(pattern: str, B: int, T: int) -> torch.Tensor | None:
    """None | "tail": item b keeps T - b*... | "holes": scattered pads | "empty_last": last item all pad."""
    if pattern == "none":
        return None
    m = torch.zeros(B, T, dtype=torch.bool)
    if pattern == "tail":
        for b in range(B):
            m[b, max(1, T - 2 * b - 1):] = True if b else False
    elif pattern == "holes":
        m[:, 1::3] = True
        m[:, 0] = False
    elif pattern == "empty_last":
        m[-1] = True
        if B > 1:
            m[0, T // 2 + 1:] = True
    return m


SHAPES = [(1, 1, 1, 1), (1, 2, 5, 9), (3, 4, 9, 5), (2, 3, 16, 16), (4, 1, 7, 23)]
RATIOS = [0.1, 0.3, 0.5, 0.9, 1.0, 2.5]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kpad", ["none", "tail", "holes", "empty_last"])
@pytest.mark.parametrize("qpad", ["none", "tail"])
@pytest.mark.parametrize("keep_ratio", RATIOS)
def test_matches_reference(shape, kpad, qpad, keep_ratio):
    B, H, Tq, Tk = shape
    q, k, v = make(B, H, Tq, Tk, seed=Tq * 31 + Tk)
    kp, qp = padding(kpad, B, Tk), padding(qpad, B, Tq)
    r = key_sparse_attention_with_scores(q, k, v, keep_ratio, kp, qp)
    ro, rw, rkeep, rs = reference(q, k, v, keep_ratio, kp, qp)
    assert r.out.shape == (B, H, Tq, 8) and r.weights.shape == (B, H, Tq, Tk) and r.keep.shape == (B, H, Tk)
    assert r.keep.dtype == torch.bool
    torch.testing.assert_close(r.key_scores, rs, atol=1e-10, rtol=0)
    assert torch.equal(r.keep, rkeep)
    if kp is not None:  # rows of an item without any valid key stay finite and attend to nothing
        empty = kp.all(dim=1)
        assert torch.all(r.out[empty] == 0)
    assert torch.isfinite(r.out).all() and torch.isfinite(r.weights).all()
    torch.testing.assert_close(r.weights, rw, atol=1e-10, rtol=0)
    torch.testing.assert_close(r.out, ro, atol=1e-10, rtol=0)
    out3, w3, keep3 = key_sparse_attention(q, k, v, keep_ratio, kp, qp)  # the outside API
    torch.testing.assert_close(out3, r.out, atol=1e-12, rtol=0)
    assert torch.equal(keep3, r.keep) and torch.equal(w3, r.weights)


@pytest.mark.parametrize("B,H,T", [(2, 3, 11), (4, 8, 40)])
@pytest.mark.parametrize("keep_ratio", [1.0, 1.7])
def test_keep_all_equals_sdpa(B, H, T, keep_ratio):
    q, k, v = make(B, H, T, T, D=16, dtype=torch.float32, seed=B)
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[1, T // 3:] = True
    out, w, keep = key_sparse_attention(q, k, v, keep_ratio, pad)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None, :])
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(w @ v, ref, atol=1e-6, rtol=0)
    assert torch.equal(keep, (~pad)[:, None, :].expand(B, H, T))
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, T), atol=1e-6, rtol=0)  # vanilla rows sum to 1


@pytest.mark.parametrize("keep_ratio,L,expected", [(0.5, 10, 5), (0.5, 11, 5), (0.1, 5, 1), (0.7, 10, 7), (0.3, 10, 3)])
def test_n_from_each_items_own_length(keep_ratio, L, expected):
    """A short padded item is sparsified by its own length, not the padded one."""
    T = 24
    q, k, v = make(2, 3, 6, T, seed=L)
    pad = torch.zeros(2, T, dtype=torch.bool)
    pad[1, L:] = True
    _, w, keep = key_sparse_attention(q, k, v, keep_ratio, pad)
    assert keep[1].sum(-1).tolist() == [expected] * 3  # random data: no ties
    assert keep[0].sum(-1).tolist() == [max(1, math.floor(keep_ratio * T + 1e-9))] * 3
    assert not keep[1, :, L:].any() and torch.all(w[1, :, :, L:] == 0)


def test_ties_with_the_threshold_are_kept():
    q, k, v = make(1, 1, 5, 8, seed=3)
    k[0, 0, 5] = k[0, 0, 2]  # identical keys → identical columns → identical scores
    scores = key_sparse_attention_with_scores(q, k, v, 1.0).key_scores[0, 0]
    rank = sorted(range(8), key=lambda z: -scores[z].item()).index(2)
    rank = min(rank, sorted(range(8), key=lambda z: -scores[z].item()).index(5))
    n = rank + 1  # the n-th largest is one of the tied pair
    _, _, keep = key_sparse_attention(q, k, v, n / 8 + 1e-6)
    assert keep[0, 0, 2] and keep[0, 0, 5]
    assert keep.sum().item() == n + 1


def test_all_equal_scores_keep_everything():
    q = torch.zeros(2, 2, 4, 8)  # uniform attention: every valid key has the same score
    k, v = torch.randn(2, 2, 10, 8), torch.randn(2, 2, 10, 8)
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1, 6:] = True
    _, _, keep = key_sparse_attention(q, k, v, 0.1, pad)
    assert torch.equal(keep, (~pad)[:, None, :].expand(2, 2, 10))


@pytest.mark.parametrize("keep_ratio", [0.2, 0.5, 0.8])
def test_unkept_weights_are_zero_and_rows_not_renormalised(keep_ratio):
    q, k, v = make(3, 2, 12, 15, seed=7)
    pad = padding("tail", 3, 15)
    _, w, keep = key_sparse_attention(q, k, v, keep_ratio, pad)
    _, w_full, _ = key_sparse_attention(q, k, v, 1.0, pad)
    dropped = ~keep[:, :, None, :].expand_as(w)
    assert torch.all(w[dropped] == 0)
    assert torch.equal(w[~dropped], w_full[~dropped])  # the kept weights are unchanged
    assert torch.all(w.sum(-1) < 1 - 1e-6)  # something was dropped in every row: sums fall below 1


def test_padded_keys_never_kept_and_zero_weight():
    q, k, v = make(4, 3, 5, 13, seed=1)
    k[:, :, 10:] = 100.0  # padding that would win every score if it were considered
    pad = torch.zeros(4, 13, dtype=torch.bool)
    pad[:, 10:] = True
    for r in (0.1, 0.5, 1.0):
        _, w, keep = key_sparse_attention(q, k, v, r, pad)
        assert not keep[:, :, 10:].any() and torch.all(w[..., 10:] == 0)


@pytest.mark.parametrize("keep_ratio", [0.3, 1.0])
def test_fully_padded_rows_give_no_nan(keep_ratio):
    q, k, v = make(2, 2, 4, 6, dtype=torch.float32)
    pad = torch.ones(2, 6, dtype=torch.bool)
    pad[0, :2] = False
    for t in (q, k, v):
        t.requires_grad_()
    r = key_sparse_attention_with_scores(q, k, v, keep_ratio, pad, torch.ones(2, 4, dtype=torch.bool))
    assert torch.isfinite(r.out).all() and torch.isfinite(r.weights).all() and torch.isfinite(r.key_scores).all()
    assert torch.all(r.out[1] == 0) and torch.all(r.weights[1] == 0) and not r.keep[1].any()
    r.out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("keep_ratio", [0.4, 1.0])
def test_gradients_reach_q_k_v(keep_ratio):
    q, k, v = make(2, 2, 5, 7)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    for t in (q, k, v):
        t.requires_grad_()
    out, _, _ = key_sparse_attention(q, k, v, keep_ratio, pad)
    (out ** 2).sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # and they are the right gradients (the hard key mask is locally constant)
    assert torch.autograd.gradcheck(lambda a, b, c: key_sparse_attention(a, b, c, keep_ratio, pad)[0],
                                    (q.detach().requires_grad_(), k.detach().requires_grad_(),
                                     v.detach().requires_grad_()))


def test_key_scores_are_column_sums_over_valid_queries():
    q, k, v = make(2, 2, 6, 5, seed=4)
    qpad = torch.zeros(2, 6, dtype=torch.bool)
    qpad[0, 3:] = True
    r = key_sparse_attention_with_scores(q, k, v, 1.0, None, qpad)
    W = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1)
    torch.testing.assert_close(r.key_scores[0], W[0, :, :3].sum(-2))
    torch.testing.assert_close(r.key_scores[1], W[1].sum(-2))
    torch.testing.assert_close(r.key_scores.sum(-1)[1], torch.full((2,), 6.0, dtype=torch.float64))


@pytest.mark.parametrize("bad", [
    dict(keep_ratio=0.0), dict(keep_ratio=-1.0), dict(keep_ratio=float("nan")),
    dict(key_padding_mask=torch.zeros(2, 5, dtype=torch.bool)),
    dict(key_padding_mask=torch.zeros(2, 7, dtype=torch.int64)),
    dict(query_padding_mask=torch.zeros(3, 4, dtype=torch.bool)),
    dict(q=torch.zeros(2, 4, 8)), dict(v=torch.zeros(2, 2, 6, 8)), dict(k=torch.zeros(2, 2, 0, 8)),
])
def test_bad_input_raises_input_error(bad):
    q, k, v = make(2, 2, 4, 7)
    args = dict(q=q, k=k, v=v, keep_ratio=0.5)
    args.update(bad)
    if "k" in bad and bad["k"].shape[2] == 0:
        args["v"] = torch.zeros(2, 2, 0, 8)
    with pytest.raises(InputError):
        key_sparse_attention(**args)


# --------------------------------------------------------------------------- module

@pytest.mark.parametrize("cross", [False, True])
def test_module_keep_all_is_vanilla_multihead_attention(cross):
    torch.manual_seed(0)
    d, H = 32, 4
    mine = KeySparseMultiheadAttention(d, H).eval()
    ref = torch.nn.MultiheadAttention(d, H, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mine.q_proj.weight, mine.kv_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([mine.q_proj.bias, mine.kv_proj.bias]))
        ref.out_proj.weight.copy_(mine.out_proj.weight)
        ref.out_proj.bias.copy_(mine.out_proj.bias)
    x = torch.randn(3, 9, d)
    kv = torch.randn(3, 6, d) if cross else x
    pad = torch.zeros(3, kv.shape[1], dtype=torch.bool)
    pad[2, 4:] = True
    out, info = mine(x, kv if cross else None, key_padding_mask=pad, keep_ratio=1.0)
    ref_out, ref_w = ref(x, kv, kv, key_padding_mask=pad, average_attn_weights=False)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(info.weights, ref_w, atol=1e-6, rtol=0)
    assert info.key_scores.shape == (3, H, kv.shape[1]) and info.keep.shape == (3, H, kv.shape[1])


def test_module_sparse_keeps_fewer_keys_and_skips_maps_when_asked():
    m = KeySparseMultiheadAttention(16, 2).eval()
    x = torch.randn(2, 10, 16)
    _, info = m(x, keep_ratio=0.3)
    assert info.keep.sum(-1).max() <= 4 and torch.all(info.weights[~info.keep[:, :, None, :].expand_as(info.weights)] == 0)
    out, none = m(x, keep_ratio=0.3, need_weights=False)
    assert none is None and out.shape == (2, 10, 16)


# --------------------------------------------------------------------------- nucleus

@pytest.mark.parametrize("probs,top_p,expected", [
    ([0.5, 0.3, 0.2], 0.5, [1, 0, 0]),  # the largest alone reaches 0.5 exactly
    ([0.5, 0.3, 0.2], 0.6, [1, 1, 0]),
    ([0.5, 0.3, 0.2], 0.8, [1, 1, 0]),  # exact boundary: 0.5 + 0.3 == 0.8
    ([0.5, 0.3, 0.2], 0.81, [1, 1, 1]),
    ([0.125, 0.5, 0.125, 0.25], 0.75, [0, 1, 0, 1]),  # unsorted input
    ([0.125, 0.5, 0.125, 0.25], 0.1, [0, 1, 0, 0]),
    ([0.1, 0.2, 0.7], 1.0, [1, 1, 1]),
    ([0.0, 0.0, 1.0], 2.0, [1, 1, 1]),  # top_p ≥ 1 keeps all, zeros too
])
def test_nucleus_cases(probs, top_p, expected):
    m = nucleus_mask(torch.tensor(probs, dtype=torch.float64), top_p)
    assert m.dtype == torch.bool and m.tolist() == [bool(e) for e in expected]


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.9, 0.99])
def test_nucleus_is_smallest_set_reaching_top_p(top_p):
    g = torch.Generator().manual_seed(int(top_p * 100))
    probs = torch.softmax(torch.randn(4, 3, 17, generator=g, dtype=torch.float64) * 2, -1)
    m = nucleus_mask(probs, top_p)
    assert m.shape == probs.shape
    kept_mass = (probs * m).sum(-1)
    assert torch.all(kept_mass >= top_p - 1e-12)
    smallest_kept = torch.where(m, probs, torch.inf).min(-1).values
    assert torch.all(kept_mass - smallest_kept < top_p)  # minimal: dropping one falls short
    largest_dropped = torch.where(m, -torch.inf, probs).max(-1).values
    assert torch.all(largest_dropped <= smallest_kept)  # the kept ones are the largest


@pytest.mark.parametrize("top_p", [0.0, -0.5, float("nan")])
def test_nucleus_bad_top_p(top_p):
    with pytest.raises(InputError):
        nucleus_mask(torch.tensor([0.5, 0.5]), top_p)


@pytest.mark.parametrize("blocks", ["query rows", "head groups"])
@pytest.mark.parametrize("keep_ratio", [0.3, 1.0])
@pytest.mark.parametrize("padded", [False, True])
def test_long_maps_built_a_block_of_query_rows_at_a_time_match_the_paper(monkeypatch, keep_ratio, padded, blocks):
    """Long sequences (a 60 s clip's frames) build W a block of query rows at a time; forced on
    small inputs here (blocks of 3 rows, not dividing Tq), every result matches the reference,
    with the maps (inference), without them (training, the deletion test) and with gradients.
    Short maps without their weights go by groups of whole heads (here 4, not dividing 2 × 3)."""
    import ser_core.attention as attention

    if blocks == "query rows":
        monkeypatch.setattr(attention, "BLOCKED_FROM", 1)
        monkeypatch.setattr(attention, "BLOCK_ELEMENTS", 3 * 9)  # Tk = 9: three query rows a block
    else:
        monkeypatch.setattr(attention, "HEAD_GROUP_ELEMENTS", 4 * 10 * 9)  # four heads a group
    q, k, v = make(2, 3, 10, 9, seed=7)
    key_pad = query_pad = None
    if padded:
        key_pad = torch.zeros(2, 9, dtype=torch.bool)
        key_pad[1, 6:] = True
        query_pad = torch.zeros(2, 10, dtype=torch.bool)
        query_pad[1, 7:] = True
    ref_out, ref_w, ref_keep, ref_scores = reference(q, k, v, keep_ratio, key_pad, query_pad)
    with torch.inference_mode():
        r = key_sparse_attention_with_scores(q, k, v, keep_ratio, key_pad, query_pad)
        bare = key_sparse_attention_with_scores(q, k, v, keep_ratio, key_pad, query_pad, need_weights=False)
    for b in range(2):
        rows = slice(None) if query_pad is None else ~query_pad[b]  # padded queries' rows: not compared
        for got in (r, bare):
            torch.testing.assert_close(got.out[b][:, rows], ref_out[b][:, rows])
            torch.testing.assert_close(got.keep[b], ref_keep[b])
            if keep_ratio < 1 or got is r:
                torch.testing.assert_close(got.key_scores[b], ref_scores[b])
        torch.testing.assert_close(r.weights[b][:, rows], ref_w[b][:, rows])
    assert bare.weights is None
    # training: the gradient reaches q, k and v through out
    qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
    trained = key_sparse_attention_with_scores(qg, kg, vg, keep_ratio, key_pad, query_pad, need_weights=False)
    torch.testing.assert_close(trained.keep, ref_keep)
    trained.out.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (qg, kg, vg))


@pytest.mark.parametrize("keep_ratio", [0.3, 1.0])
@pytest.mark.parametrize("padded_keys", [False, True])
def test_maps_pooled_to_display_resolution_match_the_pooled_full_map(monkeypatch, keep_ratio, padded_keys):
    """A clip too long to explain keeps its maps max-pooled (``maps_pooled_to``): built a block
    of query rows at a time (here 2 groups of 3 rows a block, Tq = 10 not dividing), each cell is
    the largest weight of W ⊙ M in its block, and out, keep and key scores are the full route's."""
    import ser_core.attention as attention
    from ser_core.attention import maps_pooled_to, pool_blocks, pool_map

    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", 6 * 9)
    q, k, v = make(2, 3, 10, 9, seed=11)
    key_pad = None
    if padded_keys:
        key_pad = torch.zeros(2, 9, dtype=torch.bool)
        key_pad[1, 7:] = True
    block = pool_blocks(10, 9, 4)
    assert block == (3, 3)
    with torch.inference_mode():
        full = key_sparse_attention_with_scores(q, k, v, keep_ratio, key_pad)
        pooled = key_sparse_attention_with_scores(q, k, v, keep_ratio, key_pad, pool_cells=4)
    assert pooled.weights.shape == (2, 3, 4, 3)
    torch.testing.assert_close(pooled.weights, pool_map(full.weights, block))
    torch.testing.assert_close(pooled.weights[0, 1, 3, 2], full.weights[0, 1, 9:, 6:9].max())  # an edge block
    torch.testing.assert_close(pooled.out, full.out)
    torch.testing.assert_close(pooled.key_scores, full.key_scores)
    assert torch.equal(pooled.keep, full.keep)

    # the attention module pools inside the block only; the outside API never does
    module = KeySparseMultiheadAttention(12, 3).eval()
    x = torch.randn(1, 10, 12)
    with torch.inference_mode():
        _, whole = module(x, keep_ratio=keep_ratio)
        with maps_pooled_to(4):
            _, small = module(x, keep_ratio=keep_ratio)
            _, api_weights, _ = key_sparse_attention(q, k, v, keep_ratio)
        _, after = module(x, keep_ratio=keep_ratio)
    assert small.weights.shape == (1, 3, 4, 4) and whole.weights.shape == after.weights.shape == (1, 3, 10, 10)
    torch.testing.assert_close(small.weights, pool_map(whole.weights, (3, 3)))
    assert api_weights.shape == (2, 3, 10, 9)
