"""MESM / FE2E: nucleus masks, the sparse CNN against dense convs, gradients into the attention,
mixed batches (with / without faces, different lengths), modality subsets, FLOPs, traces,
and a tiny overfit."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ser_core.asr import Word
from ser_core.attention import nucleus_mask
from ser_core.errors import InputError
from ser_core.features import Features
from ser_core.models.base import MODELS, build_model, to_trace
from ser_core.models.mesm import (
    FE2E, MESM, CrossModalAttention, CrossModalSparseBlock, MESMConfig, neighbour_table,
    submanifold_conv3x3,
)

SMALL = dict(stem_channels=4, block_channels=(8, 8, 12), attention_dim=4, d_model=16, heads=2,
             ff_dim=32, text_dim=12, dropout=0.0, transformer_dropout=0.0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU every OpenMP barrier of the many
    small ops here can wait for a descheduled worker (the overfit test: ~5 s vs ~50 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(**overrides) -> MESMConfig:
    return MESMConfig(**{**SMALL, **overrides})


def small(cls=MESM, seed: int = 0, **overrides) -> MESM:
    torch.manual_seed(seed)
    return cls(config(**overrides)).eval()


def utterance(seconds: float, n_faces: int, seed: int = 0, text_dim: int = 12) -> Features:
    rng = np.random.default_rng(seed)
    n = int(round(16000 * seconds))
    t = np.arange(n) / 16000
    audio = (0.1 * np.sin(2 * np.pi * (150 + 50 * seed) * t) + 0.02 * rng.standard_normal(n)).astype(np.float32)
    return Features(
        key=f"u{seed}", audio=audio, words=[Word("hello", 0.1, 0.4)],
        speech=np.zeros((1, 1, 1), np.float32), frame_times=np.zeros(1), text=np.zeros((1, text_dim), np.float32),
        extra={"sentence": rng.standard_normal(text_dim).astype(np.float32),
               "faces": rng.integers(0, 256, (n_faces, 64, 64, 3), dtype=np.uint8),
               "face_times": 0.1 + np.arange(n_faces) * 0.2},
    )


def batch_of(items, cfg):
    return MESM.collate(items, cfg, "cpu")


# --------------------------------------------------------------------------- the sparse conv

def dense_reference(x: torch.Tensor, keep: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """relu(conv(M_o)) with M_o the map zero-filled outside ``keep``: [S, H, W, C] → [S, H, W, C']."""
    masked = (x * keep[..., None]).permute(0, 3, 1, 2)
    return F.relu(conv(masked)).permute(0, 2, 3, 1)


@pytest.mark.parametrize("density", [1.0, 0.6, 0.2])
def test_submanifold_conv_equals_dense_conv_at_kept_points(density):
    """The sparse conv at a kept point = the dense conv of the masked map at that point
    (density 1: every point, i.e. exactly the dense conv)."""
    torch.manual_seed(0)
    S, H, W, C, Co = 3, 6, 8, 5, 7
    x = torch.randn(S, H, W, C, dtype=torch.float64)
    keep = torch.rand(S, H, W) < density
    points = keep.view(-1).nonzero().squeeze(1)
    conv = torch.nn.Conv2d(C, Co, 3, padding=1).double()
    table = neighbour_table(points, S, H, W)
    padded = torch.cat([x.view(-1, C)[points], x.new_zeros(1, C)])
    out = submanifold_conv3x3(padded, table, conv)
    assert out.shape == (len(points) + 1, Co) and torch.all(out[-1] == 0)
    ref = dense_reference(x, keep, conv).reshape(-1, Co)[points]
    torch.testing.assert_close(out[:-1], ref, rtol=1e-10, atol=1e-10)


def test_submanifold_conv_gradients_match_autograd_of_dense():
    torch.manual_seed(1)
    S, H, W, C, Co = 2, 5, 6, 3, 4
    keep = torch.rand(S, H, W) < 0.5
    points = keep.view(-1).nonzero().squeeze(1)
    table = neighbour_table(points, S, H, W)
    conv = torch.nn.Conv2d(C, Co, 3, padding=1).double()
    values = torch.randn(len(points), C, dtype=torch.float64, requires_grad=True)

    def sparse(v, w, b):
        fake = type("Conv", (), {"weight": w, "bias": b, "out_channels": Co})()
        return submanifold_conv3x3(torch.cat([v, v.new_zeros(1, C)]), table, fake)[:-1]

    assert torch.autograd.gradcheck(sparse, (values, conv.weight, conv.bias))


def test_block_sparse_equals_masked_dense_pipeline():
    """A whole sparse block (attention → 2 sparse convs → sparse max-pool) against the dense
    pipeline on M_o where each conv output is re-masked to the kept points (submanifold)."""
    torch.manual_seed(2)
    S, H, W, C, Co, d = 4, 8, 8, 6, 5, 10
    block = CrossModalSparseBlock(C, Co, d, 4, sparse=True).double().eval()
    x = torch.rand(S, H, W, C, dtype=torch.float64)
    q = torch.randn(S, d, dtype=torch.float64)
    points = torch.arange(S * H * W)
    padded = torch.cat([x.view(-1, C), x.new_zeros(1, C)])
    with torch.no_grad():
        res = block.sparse(points, padded, S, H, W, q, top_p=0.5)
        keep = res.keep.view(S, H, W)
        y = x
        for conv in block.convs:
            y = dense_reference(y, keep, conv) * keep[..., None]
        pooled = F.max_pool2d(y.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1).reshape(-1, Co)
    pooled_active = F.max_pool2d(keep[:, None].double(), 2).bool().view(-1)
    assert torch.equal(res.points, pooled_active.nonzero().squeeze(1))
    torch.testing.assert_close(res.padded[:-1], pooled[res.points], rtol=1e-10, atol=1e-10)
    assert torch.all(res.padded[-1] == 0)


# --------------------------------------------------------------------------- attention + nucleus

def test_cross_modal_attention_is_a_nucleus_over_active_points():
    torch.manual_seed(3)
    S, HW, C, d = 3, 20, 5, 7
    att = CrossModalAttention(C, d, 4)
    active = torch.rand(S, HW) < 0.7
    active[:, 0] = True
    points = active.view(-1).nonzero().squeeze(1)
    seq = points // HW
    values, q = torch.randn(len(points), C), torch.randn(S, d)
    for p in (0.2, 0.5, 0.9, 1.0, 1.5):
        M_i, M_ns = att(values, points, seq, S, HW, q, p)
        torch.testing.assert_close(M_i.sum(-1), torch.ones(S))
        assert torch.all(M_i[~active] == 0)
        assert torch.equal(M_ns, nucleus_mask(M_i, p) & active)
        assert torch.all(M_ns.sum(-1) >= 1)
        if p >= 1:
            assert torch.equal(M_ns, active)
    # eq. 1 by hand for one point
    s, i = 1, int(points[points // HW == 1][0])
    j = int((points == i).nonzero())
    m_q = torch.tanh(att.W_m(values[j]) + att.W_q(q[s]))
    score = (att.W_i(m_q)).item()
    logits = torch.full((HW,), float("-inf"))
    for jj in (points // HW == s).nonzero().squeeze(1):
        logits[points[jj] % HW] = att.W_i(torch.tanh(att.W_m(values[jj]) + att.W_q(q[s]))).item()
    M_i, _ = att(values, points, seq, S, HW, q, 0.5)
    torch.testing.assert_close(M_i[s], torch.softmax(logits, 0))
    assert logits[i % HW].item() == pytest.approx(score)


def test_top_p_one_keeps_every_point_and_smaller_p_keeps_fewer():
    m = small()
    batch = batch_of([utterance(2.0, 6, 0), utterance(1.2, 4, 1)], m.config)  # 2.0 s: full chunks
    with torch.no_grad():
        kept = {}
        for p in (0.2, 0.5, 0.8, 1.0):
            out = m(batch, top_p=p, record=True)
            kept[p] = {r.name: r.keep for r in out.attentions}
            for r in out.attentions:
                assert r.kind == "nucleus" and r.top_p == p
                assert torch.all(r.weights[~r.keep] == 0)
    for name in kept[1.0]:
        totals = [int(kept[p][name].sum()) for p in (0.2, 0.5, 0.8, 1.0)]
        assert totals == sorted(totals) and totals[0] < totals[-1], (name, totals)
    # top_p = 1 keeps every point of every map of item 0 (no padded frames: 5 full chunks)
    for name in ("spectrogram.attention0", "visual.attention0"):
        assert bool(kept[1.0][name][0].all())
    # later layers: only points that were active (pooled from the kept ones) can be kept
    H, W = m.cnns["spectrogram"].map_shapes[0]
    k0 = kept[0.5]["spectrogram.attention0"][0, 0].view(-1, H // 2, 2, W // 2, 2).any(4).any(2)
    k1 = kept[0.5]["spectrogram.attention1"][0, 0].view_as(k0)
    assert torch.all(k1 <= k0)


def test_padded_frames_of_the_last_chunk_are_never_kept():
    m = small()
    batch = batch_of([utterance(0.5, 0)], m.config)  # 41 centred frames: the 2nd chunk has 9 of 32
    assert batch["chunk_frames"].tolist() == [[32, 9]]
    with torch.no_grad():
        rec = {r.name: r for r in m(batch, top_p=1.0, record=True).attentions}
    H, W = m.cnns["spectrogram"].map_shapes[0]  # 32 × 16: a column covers 2 frames
    keep = rec["spectrogram.attention0"].keep[0, 0, 1].view(H, W)
    assert keep[:, :5].all() and not keep[:, 5:].any()  # columns 0–4 hold frames 0–9


# --------------------------------------------------------------------------- model-level checks

def test_mesm_at_top_p_one_equals_fe2e_with_the_same_weights():
    m = small(seed=4)
    fe = small(FE2E)
    missing, unexpected = fe.load_state_dict(m.state_dict(), strict=False)
    assert not missing and unexpected and all(".attention." in k for k in unexpected)
    batch = batch_of([utterance(2.0, 5, 2), utterance(1.6, 0, 3)], m.config)  # whole chunks only
    with torch.no_grad():
        torch.testing.assert_close(m(batch, top_p=1.0).logits, fe(batch).logits, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(m(batch, top_p=0.3).logits, fe(batch).logits, atol=1e-4)


def test_mesm_starts_from_a_fe2e_checkpoint_and_learns_only_its_attention_layers(tmp_path):
    """FE2E is MESM without its attention layers (Sec. 4.2): a MESM run may start from a FE2E file.
    Every FE2E tensor is loaded, the 24 attention tensors keep their initial values, and the started
    MESM at top_p = 1 answers exactly as the FE2E file; another model's file is still refused."""
    from ser_core.checkpoint import save_checkpoint
    from ser_core.train import _init_from, _source_meta

    fe = small(FE2E, seed=11)
    src = save_checkpoint(tmp_path / "fe2e.safetensors", fe, {"model": "fe2e", "config": fe.config.to_dict()})
    m = small(seed=12)
    attention_before = {k: v.clone() for k, v in m.state_dict().items() if ".attention." in k}
    logs: list[str] = []
    _init_from(m, str(src), torch.device("cpu"), logs.append, list(m.config.labels))
    n_fe, n_m = len(fe.state_dict()), len(m.state_dict())
    assert n_m - n_fe == 2 * 3 * 4 and f"initialised {n_fe}/{n_m} tensors" in logs[0]
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, attention_before[k] if ".attention." in k else fe.state_dict()[k])
    m.eval()
    batch = batch_of([utterance(2.0, 5, 2), utterance(1.6, 0, 3)], m.config)
    with torch.no_grad():
        torch.testing.assert_close(m(batch, top_p=1.0).logits, fe(batch).logits, rtol=1e-5, atol=1e-5)
    assert _source_meta(str(src), "mesm")["model"] == "fe2e"
    with pytest.raises(InputError, match="holds a fe2e model, not ilt"):
        _source_meta(str(src), "ilt")


def test_gradient_reaches_attention_parameters():
    m = small(seed=5).train()
    batch = batch_of([utterance(1.5, 6, 4), utterance(1.0, 0, 5), utterance(2.2, 3, 6)], m.config)
    out = m(batch, top_p=0.5)
    F.cross_entropy(out.logits, torch.tensor([0, 1, 3])).backward()
    n_attention = 0
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if ".attention." in name:
            n_attention += 1
            assert p.grad.abs().sum() > 0, name  # W_m, b_m, W_q, W_i of every block
    assert n_attention == 2 * 3 * 4
    assert all(p.grad.abs().sum() > 0 for p in m.parameters())


def test_mixed_batch_shapes_masks_and_padding_invariance():
    m = small(seed=6)
    items = [utterance(1.3, 7, 7), utterance(0.7, 0, 8), utterance(2.5, 12, 9)]
    batch = batch_of(items, m.config)
    assert batch["chunks"].shape == (3, 7, 64, 32)
    assert batch["chunk_mask"].tolist() == [[False] * 4 + [True] * 3, [False] * 2 + [True] * 5, [False] * 7]
    assert batch["faces"].shape == (3, 12, 64, 64, 3) and batch["faces"].dtype == torch.uint8
    assert (~batch["face_mask"]).sum(1).tolist() == [7, 0, 12]
    with torch.no_grad():
        out = m(batch, record=True)
        assert out.logits.shape == (3, 4) and torch.isfinite(out.logits).all()
        torch.testing.assert_close(out.probs.sum(-1), torch.ones(3))
        w = out.extras["item_extras"]["modality_weights"]
        assert w.shape == (3, 3) and w[1, 2] == 0 and torch.all(w[[0, 2], 2] > 0)
        torch.testing.assert_close(w.sum(-1), torch.ones(3))
        masks = out.extras["padding_masks"]
        assert torch.equal(masks["spectrogram"], batch["chunk_mask"])
        assert torch.equal(masks["visual"], batch["face_mask"])
        for r in out.attentions:
            mod = r.query_modality
            assert r.weights.shape[:3] == (3, 1, masks[mod].shape[1])
            assert not r.keep[masks[mod][:, None, :, None].expand_as(r.keep)].any()  # padding rows
        for i, item in enumerate(items):  # each item alone gives the same prediction
            alone = m(batch_of([item], m.config))
            torch.testing.assert_close(alone.probs[0], out.probs[i], rtol=0, atol=1e-5)


def test_batch_without_any_face():
    m = small()
    batch = batch_of([utterance(1.0, 0, 1), utterance(0.6, 0, 2)], m.config)
    assert batch["faces"].shape[1] == 0
    with torch.no_grad():
        out = m(batch, record=True)
    assert {r.query_modality for r in out.attentions} == {"spectrogram"}
    assert torch.all(out.extras["item_extras"]["modality_weights"][:, 2] == 0)
    names = out.extras["model_extras"]["flops_layers"]
    visual = [i for i, n in enumerate(names) if n.startswith("visual.")]
    assert visual and torch.all(out.extras["item_extras"]["flops"][:, visual] == 0)


@pytest.mark.parametrize("modalities", ["T", "TA", "TV", "TAV"])
def test_modality_subsets(modalities):
    m = small(modalities=modalities)
    assert set(m.cnns) == {{"A": "spectrogram", "V": "visual"}[c] for c in modalities if c != "T"}
    batch = batch_of([utterance(1.2, 5, 1), utterance(0.8, 3, 2)], m.config)
    assert ("chunks" in batch) == ("A" in modalities) and ("faces" in batch) == ("V" in modalities)
    with torch.no_grad():
        out = m(batch, record=True)
    assert out.logits.shape == (2, 4) and torch.isfinite(out.logits).all()
    assert {r.query_modality for r in out.attentions} == set(m.cnns)
    assert out.extras["item_extras"]["modality_weights"].shape == (2, len(modalities))
    assert out.extras["model_extras"]["modality_order"] == [{"T": "text", "A": "spectrogram", "V": "visual"}[c]
                                                           for c in modalities]


def test_modalities_override_at_forward_time():
    m = small(seed=7)
    with_face, no_face = utterance(1.2, 6, 3), utterance(1.2, 0, 3)  # same audio and text
    with torch.no_grad():
        ta = m(batch_of([with_face], m.config), modalities="TA", record=True)
        tav_no_face = m(batch_of([no_face], m.config))
        t_only = m(batch_of([with_face], m.config), modalities="T")
    torch.testing.assert_close(ta.probs, tav_no_face.probs)  # V left out = V absent
    assert {r.query_modality for r in ta.attentions} == {"spectrogram"}
    assert t_only.extras["item_extras"]["modality_weights"][0].tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(InputError):
        m(batch_of([with_face], m.config), modalities="AV")
    with pytest.raises(InputError):
        small(modalities="TA")(batch_of([with_face], config(modalities="TA")), modalities="TV")


def test_extract_then_forward_equals_forward():
    m = small(seed=8)
    batch = batch_of([utterance(1.1, 4, 1), utterance(0.9, 0, 2)], m.config)
    with torch.no_grad():
        ext = m.extract(batch)
        for p in (0.3, 0.9):
            torch.testing.assert_close(m(None, top_p=p, extracted=ext).probs, m(batch, top_p=p).probs)


# --------------------------------------------------------------------------- FLOPs

def test_fe2e_has_no_sparsity_and_more_flops():
    m, fe = small(seed=9), small(FE2E, seed=9)
    batch = batch_of([utterance(2.0, 5, 1), utterance(1.2, 0, 2)], m.config)  # whole chunks only
    with torch.no_grad():
        out_fe = fe(batch, top_p=0.3, record=True)  # top_p is ignored by FE2E
        out_m = m(batch, top_p=0.5)
        out_one = m(batch, top_p=1.0)
    assert out_fe.attentions == [] and not any(".attention." in n for n, _ in fe.named_parameters())
    f_fe, f_m, f_one = (MESM.count_flops(o) for o in (out_fe, out_m, out_one))
    assert f_fe["flops"] == f_fe["dense_flops"] and f_fe["ratio"] == 1.0
    assert f_m["dense_flops"] == f_fe["flops"]  # MESM reports what FE2E spends on the same batch
    assert f_m["flops"] < 0.8 * f_fe["flops"]
    assert f_one["flops"] > f_fe["flops"]  # every point kept: the convs as FE2E + the attention layers
    assert m.flops(batch, top_p=0.5)["flops"] == pytest.approx(f_m["flops"])
    # per layer: sparse convs never exceed dense ones, the stem is dense in both
    for name, (sparse, dense) in f_m["per_layer"].items():
        if name.endswith(".stem"):
            assert sparse == dense
        elif ".conv" in name:
            assert sparse <= dense
        else:
            assert dense == 0 and sparse > 0


def test_flops_match_the_kept_points():
    m = small(seed=10)
    batch = batch_of([utterance(1.2, 3, 1)], m.config)
    with torch.no_grad():
        out = m(batch, top_p=0.6, record=True)
    names = out.extras["model_extras"]["flops_layers"]
    flops = out.extras["item_extras"]["flops"][0]
    for r in out.attentions:
        b = int(r.name[-1])
        block = m.cnns[r.query_modality].blocks[b]
        kept = int(r.keep[0].sum())
        conv0 = flops[names.index(f"{r.query_modality}.block{b}.conv0")]
        assert conv0.item() == 2 * kept * 9 * block.convs[0].in_channels * block.convs[0].out_channels


# --------------------------------------------------------------------------- traces, labels, I/O

def test_to_trace_with_axis_labels():
    m = small(seed=11)
    items = [utterance(1.3, 7, 1), utterance(0.7, 0, 2)]
    with torch.no_grad():
        out = m(batch_of(items, m.config), record=True)
    shapes = out.extras["model_extras"]["map_shapes"]
    for i, item in enumerate(items):
        labels = m.axis_labels(item)
        trace = to_trace(out, i, labels, "mesm")
        assert trace.model == "mesm"
        assert len(labels["spectrogram"]) == 4 if i == 0 else 2
        for rec in trace.records:
            H, W = shapes[rec.name]
            n_q = len(labels[rec.query_modality])
            assert rec.weights.shape == (1, n_q, H * W) and rec.keep.shape == (1, n_q, H * W)
            assert rec.key_labels.coords.shape == (H * W, 2)
            if n_q:  # a record's key axis reshapes to the H × W map (row-major)
                grid = rec.keep[0, 0].reshape(H, W)
                r, c = np.argwhere(grid)[0]
                assert rec.key_labels.names[r * W + c] == f"({r}, {c})"
        assert trace["visual.attention0"].weights.shape[1] == (7 if i == 0 else 0)
        np.testing.assert_allclose(labels["visual"].start, items[i].extra["face_times"])
        np.testing.assert_allclose(labels["spectrogram"].start, np.arange(len(labels["spectrogram"])) * 0.4)
        assert labels["spectrogram"].end[-1] == pytest.approx(items[i].duration)
        assert trace.extras["flops"].shape == (len(out.extras["model_extras"]["flops_layers"]),)
        json.loads(trace.to_json(with_weights=False))


def test_collate_caps_chunks_and_faces():
    cfg = config(max_chunks=3, max_faces=4)
    m = MESM(cfg).eval()
    item = utterance(2.0, 10, 1)
    batch = batch_of([item], cfg)
    assert batch["chunks"].shape[1] == 3 and batch["faces"].shape[1] == 4
    labels = m.axis_labels(item)
    assert len(labels["spectrogram"]) == 3 and len(labels["visual"]) == 4
    np.testing.assert_allclose(labels["visual"].start, item.extra["face_times"][[0, 3, 6, 9]])
    np.testing.assert_array_equal(batch["faces"][0, 1].numpy(), item.extra["faces"][3])
    with torch.no_grad():
        assert to_trace(m(batch, record=True), 0, labels, "mesm").records


def test_bad_input_raises_input_error():
    m = small()
    item = utterance(1.0, 2, 1)
    del item.extra["sentence"]
    with pytest.raises(InputError):
        batch_of([item], m.config)
    batch = batch_of([utterance(1.0, 2, 1)], m.config)
    for p in (0.0, -1.0, float("nan")):
        with pytest.raises(InputError):
            m(batch, top_p=p)
    bad = dict(batch, chunks=batch["chunks"][..., :16])
    with pytest.raises(InputError):
        m(bad)
    bad = dict(batch, sentence=torch.full_like(batch["sentence"], float("nan")))
    with pytest.raises(InputError):
        m(bad)
    with pytest.raises(InputError):
        config(modalities="AV")
    with pytest.raises(InputError):
        config(block_channels=(8, 8, 8, 8, 8))  # 32 frames cannot be halved 6 times


def test_registry_and_config_round_trip():
    assert MODELS["mesm"] is MESM and MODELS["fe2e"] is FE2E
    cfg = config(labels=("a", "b"), num_classes=2, modalities="TV")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert MESMConfig.from_dict(data) == cfg
    assert isinstance(build_model("fe2e", data), FE2E) and build_model("mesm", data).labels == ("a", "b")
    assert MESM.inputs == ("audio", "sentence", "faces") and FE2E.inputs == MESM.inputs


# --------------------------------------------------------------------------- training

def test_tiny_overfit_reduces_loss():
    torch.manual_seed(12)
    m = MESM(config()).train()
    items = [utterance(0.8 + 0.2 * i, 4 if i % 2 else 0, i) for i in range(4)]
    batch = batch_of(items, m.config)
    y = torch.tensor([0, 1, 2, 3])
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(m(batch).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_face_local_contrast_makes_a_face_s_brightness_irrelevant():
    """face_local_contrast: each crop minus its local mean before the stem, so two faces that differ
    only by a uniform brightness give the same visual answer (the plain model tells them apart)."""
    item = utterance(1.0, 3, seed=4)
    dark = dataclasses.replace(item, extra={**item.extra, "faces": (item.extra["faces"] // 2).astype(np.uint8)})
    bright = dataclasses.replace(item, extra={**item.extra, "faces": (item.extra["faces"] // 2 + 100).astype(np.uint8)})
    for contrast in (False, True):
        model = small(seed=1, modalities="TV", face_local_contrast=contrast)
        cfg = model.config
        with torch.no_grad():
            a, b = (model(batch_of([x], cfg)).extras["item_extras"]["modality_probs"][0, 1] for x in (dark, bright))
        assert torch.allclose(a, b, atol=1e-5) == contrast


def test_standardised_attention_scores_a_point_by_how_it_differs_from_its_map():
    """attention_standardize: eq. 1 reads each map's features at mean 0, variance 1 over its
    active points, so scaling a map's features (a brighter face) leaves its attention as it was."""
    from ser_core.models.mesm_sparse_cnn import CrossModalAttention, standardized_per_map

    torch.manual_seed(0)
    values = torch.rand(10, 3) + torch.arange(10.0)[:, None]  # two maps of 6 and 4 active points
    seq = torch.tensor([0] * 6 + [1] * 4)
    z = standardized_per_map(values, seq, 2)
    for s in (0, 1):
        np.testing.assert_allclose(z[seq == s].mean(0).numpy(), 0, atol=1e-5)
        np.testing.assert_allclose(z[seq == s].var(0, unbiased=False).numpy(), 1, atol=1e-3)
    points = torch.tensor([0, 1, 2, 3, 4, 5, 8, 9, 10, 11])  # flat indices in 2 maps of 8 points
    q = torch.randn(2, 5)
    for standardize in (False, True):
        att = CrossModalAttention(3, 5, 4, standardize)
        a, _ = att(values, points, seq, 2, 8, q, 0.5)
        b, _ = att(3.0 * values + 2.0, points, seq, 2, 8, q, 0.5)
        assert torch.allclose(a, b, atol=1e-4) == standardize


def test_explored_points_pass_only_while_training():
    """attention_explore: while training, a random share of the points eq. 3 drops is kept too
    (a superset of the nucleus mask); in eval mode the block is exactly the plain one."""
    torch.manual_seed(5)
    S, H, W, C, Co, d = 3, 8, 8, 6, 5, 10
    plain = CrossModalSparseBlock(C, Co, d, 4, sparse=True)
    explore = CrossModalSparseBlock(C, Co, d, 4, sparse=True, explore=0.5)
    explore.load_state_dict(plain.state_dict())
    x = torch.rand(S * H * W, C)
    padded, points, q = torch.cat([x, x.new_zeros(1, C)]), torch.arange(S * H * W), torch.randn(S, d)
    with torch.no_grad():
        base = plain.eval().sparse(points, padded, S, H, W, q, top_p=0.3)
        same = explore.eval().sparse(points, padded, S, H, W, q, top_p=0.3)
        wider = explore.train().sparse(points, padded, S, H, W, q, top_p=0.3)
    assert torch.equal(base.keep, same.keep) and torch.equal(base.padded, same.padded)
    assert bool((wider.keep | ~base.keep).all()) and int(wider.keep.sum()) > int(base.keep.sum())
    with pytest.raises(InputError, match="attention_explore"):
        config(attention_explore=1.0)
