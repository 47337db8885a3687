"""MFSN model: segment layout, shapes, masks, gradients (α included, TEC detached), the Choice
Cell, the Fusion Cell's operations (reverse versions, softmax(α) mixing, derive), an overfit
run, traces, the data2vec-style SEC input, config round trip, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ser_core.errors import InputError
from ser_core.features import Features
from ser_core.models.base import MODELS, build_model, to_trace
from ser_core.models.mfsn import (
    MFSN,
    OPERATIONS,
    FusionCell,
    FusionOperation,
    MFSNConfig,
    segment_layout,
)

DIM = 16
# 1 s segments (50 Whisper frames each) keep the tests fast; the default is the paper's 3 s.
SMALL = dict(audio_dim=DIM, audio_layers=5, d_model=16, hidden=16, cnn_channels=(4, 8), cnn_freq_bins=2,
             lstm_hidden=8, n_mfcc=13, segment_seconds=1.0, frames_per_segment=50, max_segments=4,
             dropout=0.1)


def small_model(seed: int = 0, **overrides) -> MFSN:
    torch.manual_seed(seed)
    return MFSN(MFSNConfig(**{**SMALL, **overrides})).eval()


def make_feats(seconds: float, seed: int = 0, dim: int = DIM, layers: int = 5, extra=None) -> Features:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * 16000))
    T = math.ceil(n / 320)
    t = np.arange(n) / 16000
    audio = (0.1 * np.sin(2 * np.pi * (150 + 40 * seed) * t) + 0.02 * rng.standard_normal(n)).astype(np.float32)
    speech = rng.standard_normal((layers, T, dim)).astype(np.float32)
    return Features(key=f"u{seed}", audio=audio, words=[], speech=speech, frame_times=np.arange(T) * 0.02 + 0.01,
                    text=np.zeros((0, 384), np.float32), extra=dict(extra or {}))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are small: one thread avoids OpenMP's spin-wait cost on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def batch_of(model: MFSN, feats: list[Features]) -> dict[str, torch.Tensor]:
    return MFSN.collate(feats, model.config, "cpu")


# --------------------------------------------------------------------------- layout and shapes

def test_registered_and_defaults():
    assert MODELS["mfsn"] is MFSN and MFSN.inputs == ("speech", "audio")
    cfg = MFSNConfig()
    assert cfg.sec_layers == (1, 2, 4) and cfg.chosen_level == 2 and len(cfg.operations) == 8
    assert MFSNConfig(audio_layers=7).sec_layers == (1, 3, 6)  # early / middle / last of 6 layers
    n = sum(p.numel() for p in MFSN(cfg).parameters())
    assert 2e5 < n < 2e6, n


def test_collate_segments_frames_and_spectral_features():
    m = small_model()
    f = make_feats(2.3, seed=1)  # 3 segments of 1 s: 1 + 1 + 0.3 s
    b = batch_of(m, [f, make_feats(0.6, seed=2)])
    assert b["segment_mask"].tolist() == [[False] * 3, [False, True, True]]
    torch.testing.assert_close(b["segment_start"][0], torch.tensor([0.0, 1.0, 2.0]))
    n_seg, idx, seg, pos = segment_layout(len(f.audio), f.frame_times, m.config)
    assert n_seg == 3 and (~b["frame_mask"][0]).sum() == len(idx) == len(f.frame_times)
    # each frame sits in the segment holding its centre time, at its rank there
    assert np.all(np.floor(f.frame_times[idx]) == seg)
    for k in (0, 49, 50, 111):
        s, p = int(seg[k]), int(pos[k])
        torch.testing.assert_close(b["tec"][0, s, p], torch.from_numpy(f.speech[-1, idx[k]]))
        for level, layer in enumerate(m.config.sec_layers):
            torch.testing.assert_close(b["sec_levels"][0, s, level, p], torch.from_numpy(f.speech[layer, idx[k]]))
    assert b["frame_mask"][0, 2].sum() == 50 - 15  # 0.3 s of frames in the last segment
    # spectral frames: 10 ms hop, centred; 0.3 s → 1 + 4800 // 160 real frames
    assert b["spectrogram"].shape[2] == 257 and b["mfcc"].shape[2] == 13
    assert (~b["spectral_mask"][0, 2]).sum() == 31 and (~b["spectral_mask"][0, 0]).sum() == 101
    assert b["spectrogram"][0, 2][:, 31:].abs().sum() == 0  # padding zeroed


def test_long_utterances_keep_max_segments():
    m = small_model()
    b = batch_of(m, [make_feats(6.5, seed=3)])
    assert b["segment_mask"].shape == (1, 4) and not b["segment_mask"].any()
    labels = m.axis_labels(make_feats(6.5, seed=3))
    assert len(labels["segments"]) == 4 and len(labels["sec"]) == 200


@pytest.mark.parametrize("record", [False, True])
def test_shapes_probabilities_and_extras(record):
    m = small_model()
    b = batch_of(m, [make_feats(0.5, 1), make_feats(2.3, 2), make_feats(3.0, 3)])
    out = m(b, record=record)
    assert out.logits.shape == (3, 4) and out.probs.shape == (3, 4)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(3))
    S, Fr = 3, 50
    names = [a.name for a in out.attentions]
    if record:
        assert names == ["co_attention.sec", "co_attention.tec", "fusion_cell.attention", "fusion_cell.attention_r"]
        assert out.attentions[0].weights.shape == (3, 1, S, S * Fr)
        assert out.attentions[2].weights.shape == (3, 1, S * Fr, S * Fr)
        assert (out.attentions[2].query_modality, out.attentions[2].key_modality) == ("tec", "sec")
        assert (out.attentions[3].query_modality, out.attentions[3].key_modality) == ("sec", "tec")
    else:
        assert names == []
    extras = out.extras["model_extras"]
    assert extras["alpha"].shape == (8,) and abs(float(extras["alpha"].sum()) - 1) < 1e-6
    assert extras["operations"] == list(OPERATIONS) and extras["chosen_level"] == 2
    seg_probs = out.extras["item_extras"]["segment_probs"]
    torch.testing.assert_close(seg_probs.sum(-1), (~b["segment_mask"]).float())
    # utterance logits = mean of the segments' log-probabilities
    logp = seg_probs[1].clamp_min(1e-30).log()
    torch.testing.assert_close(out.logits[1], logp.mean(0), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- masks

def test_padding_does_not_change_an_items_output():
    m = small_model(1)
    f = make_feats(1.7, seed=4)
    with torch.no_grad():
        alone = m(batch_of(m, [f])).probs[0]
        batch = batch_of(m, [f, make_feats(3.9, seed=5)])  # more segments and frames than f
        padded = m(batch).probs[0]
        torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-4)
        # garbage in every padding position (frames, spectral frames, whole segments) changes nothing
        g = torch.Generator().manual_seed(0)
        dirty = {k: v.clone() for k, v in batch.items()}
        fm, sm = dirty["frame_mask"], dirty["spectral_mask"]
        dirty["tec"][fm] = torch.randn(int(fm.sum()), DIM, generator=g) * 50
        dirty["sec_levels"].permute(0, 1, 3, 2, 4)[fm] = torch.randn(int(fm.sum()), 3, DIM, generator=g) * 50
        dirty["spectrogram"].permute(0, 1, 3, 2)[sm] = torch.randn(int(sm.sum()), 257, generator=g) * 50
        dirty["mfcc"].permute(0, 1, 3, 2)[sm] = torch.randn(int(sm.sum()), 13, generator=g) * 50
        torch.testing.assert_close(m(dirty).probs, m(batch).probs, atol=1e-5, rtol=1e-4)
        # ... while a real frame does change it
        dirty["tec"][0, 0, 3, 0] += 5.0  # one feature of one frame (LayerNorm ignores a shift of all)
        assert not torch.allclose(m(dirty).probs[0], padded, atol=1e-6)


# --------------------------------------------------------------------------- gradients

def test_gradient_reaches_every_parameter_and_alpha_but_not_tec():
    m = small_model(2).train()
    b = batch_of(m, [make_feats(1.4, 1), make_feats(2.6, 2), make_feats(0.8, 3), make_feats(1.9, 4)])
    b["tec"].requires_grad_(True)
    b["sec_levels"].requires_grad_(True)
    loss = F.cross_entropy(m(b).logits, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert float(m.fusion_cell.alpha.grad.abs().sum()) > 0
    assert b["tec"].grad is None  # h_T is detached before the Fusion Cell (sec. 2.2)
    assert float(b["sec_levels"].grad.abs().sum()) > 0  # SEC is not


def test_arch_and_weight_parameters_partition_the_model():
    m = small_model()
    arch, weights = m.arch_parameters(), m.weight_parameters()
    assert len(arch) == 1 and arch[0] is m.fusion_cell.alpha
    assert {id(p) for p in arch} | {id(p) for p in weights} == {id(p) for p in m.parameters()}
    assert not {id(p) for p in arch} & {id(p) for p in weights}
    groups = m.param_groups()
    assert groups[1]["arch"] and groups[1]["params"][0] is m.fusion_cell.alpha


# --------------------------------------------------------------------------- Choice Cell

def test_choice_cell_samples_every_level_in_training_and_is_fixed_in_eval():
    m = small_model(3)
    b = batch_of(m, [make_feats(1.2, 1)])
    m.train()
    torch.manual_seed(0)
    seen = [m(b).extras["model_extras"]["chosen_level"] for _ in range(60)]
    assert set(seen) == {0, 1, 2} and min(seen.count(i) for i in range(3)) >= 10
    m.eval()
    m.set_level(1)
    with torch.no_grad():
        outs = [m(b) for _ in range(3)]
    assert all(o.extras["model_extras"]["chosen_level"] == 1 for o in outs)
    torch.testing.assert_close(outs[0].probs, outs[2].probs)
    # only the chosen level is read
    with torch.no_grad():
        other = {k: v.clone() for k, v in b.items()}
        other["sec_levels"][:, :, [0, 2]] = torch.randn_like(other["sec_levels"][:, :, [0, 2]])
        torch.testing.assert_close(m(other).probs, outs[0].probs)
        other["sec_levels"][:, :, 1, :, 0] += 1.0
        assert not torch.allclose(m(other).probs, outs[0].probs)
    with pytest.raises(InputError):
        m.set_level(3)


def test_choose_on_validation_keeps_the_best_level():
    m = small_model()
    scores = {0: 0.4, 1: 0.7, 2: 0.5}
    chosen = m.choose_on_validation(lambda: scores[m.config.chosen_level])
    assert chosen == {"chosen_level": 1, "val_ua_by_level": [0.4, 0.7, 0.5]}
    assert m.config.chosen_level == 1 and MFSNConfig.from_dict(m.config.to_dict()).chosen_level == 1


# --------------------------------------------------------------------------- Fusion Cell

def _xy_mask(seed=0, N=3, Fr=7, d=8):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(N, Fr, d, generator=g), torch.randn(N, Fr, d, generator=g)
    mask = torch.zeros(N, Fr, dtype=torch.bool)
    mask[1, 5:] = True
    mask[2, 2:] = True
    return x, y, mask


def test_simple_operations_follow_their_equations():
    x, y, mask = _xy_mask()
    torch.testing.assert_close(FusionOperation("sum", 8, 0.0)(x, y, mask)[0], x + y)
    torch.testing.assert_close(FusionOperation("product", 8, 0.0)(x, y, mask)[0], x * y)
    assert FusionOperation("zero", 8, 0.0)(x, y, mask)[0].abs().sum() == 0
    att = FusionOperation("attention", 8, 0.0)
    out, w = att(x, y, mask)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 7))
    assert w[1, :, 5:].abs().sum() == 0 and w[2, :, 2:].abs().sum() == 0
    ref = torch.softmax((x @ y.transpose(1, 2) / math.sqrt(8)).masked_fill(mask[:, None], -1e9), -1) @ y
    torch.testing.assert_close(out, F.layer_norm(ref, (8,)))
    cat = FusionOperation("concat_fc", 8, 0.0)
    torch.testing.assert_close(cat(x, y, mask)[0], F.relu(cat.op.fc(torch.cat([x, y], -1))))
    ism = FusionOperation("ism", 8, 0.0)
    y_bar = ((y * (~mask)[..., None]).sum(1) / (~mask).sum(1, keepdim=True))
    torch.testing.assert_close(ism(x, y, mask)[0], x * (1 + torch.sigmoid(ism.op.gate(y_bar)))[:, None])


@pytest.mark.parametrize("base", ["attention", "concat_fc", "ism"])
def test_reverse_operations_swap_their_inputs(base):
    torch.manual_seed(0)
    fwd, rev = FusionOperation(base, 8, 0.0), FusionOperation(base + "_r", 8, 0.0)
    assert not fwd.reverse and rev.reverse
    rev.load_state_dict(fwd.state_dict())  # same weights: op_r(x, y) must equal op(y, x)
    x, y, mask = _xy_mask(1)
    out_r, w_r = rev(x, y, mask)
    out_swapped, w_swapped = fwd(y, x, mask)
    torch.testing.assert_close(out_r, out_swapped)
    if base == "attention":
        torch.testing.assert_close(w_r, w_swapped)
    assert not torch.allclose(fwd(x, y, mask)[0], out_r, atol=1e-4)  # order matters


def test_fusion_cell_mixes_operations_by_softmax_alpha():
    torch.manual_seed(0)
    cell = FusionCell(OPERATIONS, 8, 0.0)
    with torch.no_grad():
        cell.alpha.copy_(torch.linspace(-1, 2, 8))
    x, y, mask = _xy_mask(2)
    out, maps = cell(x, y, mask)
    w = torch.softmax(torch.linspace(-1, 2, 8), 0)
    expected = sum(w[i] * cell.ops[name](x, y, mask)[0] for i, name in enumerate(OPERATIONS))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(cell.weights(), w)
    assert set(maps) == {"attention", "attention_r"}
    assert cell.argmax_op() == "ism_r"


def test_derive_fixes_the_argmax_operation():
    m = small_model(4)
    with torch.no_grad():
        m.fusion_cell.alpha.zero_()
        m.fusion_cell.alpha[OPERATIONS.index("concat_fc")] = 1.0
    assert m.derive() == "concat_fc"
    assert m.config.derived and m.config.derived_op == "concat_fc"
    assert list(m.fusion_cell.ops) == ["concat_fc"] and m.arch_parameters() == []
    assert not m.fusion_cell.alpha.requires_grad
    x, y, mask = _xy_mask(3, d=16)
    torch.testing.assert_close(m.fusion_cell(x, y, mask)[0], m.fusion_cell.ops["concat_fc"](x, y, mask)[0])
    b = batch_of(m, [make_feats(1.5, 1), make_feats(0.7, 2)])
    with torch.no_grad():
        out = m(b, record=True)
        assert [a.name for a in out.attentions] == ["co_attention.sec", "co_attention.tec"]
        assert out.extras["model_extras"]["fusion_op"] == "concat_fc" and out.extras["model_extras"]["derived"]
        m.fusion_cell.alpha.copy_(torch.randn(8))  # α no longer mixes anything
        torch.testing.assert_close(m(b).probs, out.probs)
        # a checkpoint of the derived model rebuilds the same cell
        again = build_model("mfsn", m.config.to_dict()).eval()
        again.load_state_dict(m.state_dict())
        torch.testing.assert_close(again(b).probs, out.probs)
    # the derived architecture retrains: every remaining weight gets a gradient, α none
    m.train()
    F.cross_entropy(m(b).logits, torch.tensor([0, 1])).backward()
    assert m.fusion_cell.alpha.grad is None
    assert all(p.grad is not None for p in m.weight_parameters())


# --------------------------------------------------------------------------- training

def test_tiny_overfit():
    torch.manual_seed(0)
    m = small_model(5, dropout=0.0).train()
    feats = [make_feats(0.9 + 0.3 * i, seed=10 + i) for i in range(6)]
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    b = batch_of(m, feats)
    opt = torch.optim.AdamW(m.weight_parameters(), lr=5e-3)
    arch_opt = torch.optim.Adam(m.arch_parameters(), lr=3e-3, betas=(0.5, 0.999))
    alpha0 = m.fusion_cell.alpha.detach().clone()
    first = None
    for _ in range(80):
        loss = F.cross_entropy(m(b).logits, y)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        arch_opt.zero_grad()
        loss.backward()
        opt.step()
        arch_opt.step()
    m.eval()
    with torch.no_grad():
        for level in range(3):  # every level was trained by the Choice Cell
            m.set_level(level)
            out = m(b)
            assert (out.probs.argmax(-1) == y).all(), (level, out.probs)
            assert float(F.cross_entropy(out.logits, y)) < 0.2 * first
    assert not torch.allclose(m.fusion_cell.alpha, alpha0)  # α was searched


# --------------------------------------------------------------------------- trace

def test_to_trace_labels_segments_and_frames_by_absolute_time():
    m = small_model(6)
    feats = [make_feats(2.4, 1), make_feats(0.9, 2)]
    with torch.no_grad():
        out = m(batch_of(m, feats), record=True)
    for i, f in enumerate(feats):
        trace = to_trace(out, i, m.axis_labels(f), "mfsn")
        n_seg = math.ceil(len(f.audio) / 16000)
        co = trace["co_attention.sec"]
        assert co.kind == "co-attention" and co.weights.shape == (1, n_seg, len(f.frame_times))
        assert co.query_labels.kind == "segments" and co.key_labels.kind == "frames"
        np.testing.assert_allclose(co.query_labels.start, np.arange(n_seg))
        np.testing.assert_allclose((co.key_labels.start + co.key_labels.end) / 2, f.frame_times, atol=1e-6)
        for s in range(n_seg):  # a segment attends only to its own frames
            own = (co.key_labels.start >= s - 0.011) & (co.key_labels.end <= s + 1 + 0.011)
            assert co.weights[0, s, ~own].sum() == 0
        fusion = trace["fusion_cell.attention"]
        assert fusion.weights.shape == (1, len(f.frame_times), len(f.frame_times))
        assert fusion.query_labels.names[0] == "0.01 s"
        np.testing.assert_allclose(fusion.weights.sum(-1), 1.0, atol=1e-5)
        assert trace.extras["alpha"].shape == (8,) and trace.extras["chosen_level"] == 2
        assert trace.extras["segment_probs"].shape == (3, 4)  # padded to the batch's segments
        assert trace.extras["segment_mask"].tolist() == [s >= n_seg for s in range(3)]
        assert '"co_attention.tec"' in trace.to_json()


# --------------------------------------------------------------------------- SEC from a second encoder

def test_sec_levels_from_a_second_encoder():
    T = math.ceil(1.6 * 16000 / 320)
    g = np.random.default_rng(0)
    levels = g.standard_normal((3, 72, 24)).astype(np.float32)  # another frame rate, another width
    f = make_feats(1.6, 1, extra={"sec_levels": levels})
    m = small_model(7, sec_source="extra", sec_dim=24)
    b = batch_of(m, [f])
    assert b["sec_levels"].shape == (1, 2, 3, 50, 24)
    assert m(b).probs.shape == (1, 4)
    # with the second encoder's frame times equal to Whisper's, the frames are taken as they are
    aligned = g.standard_normal((3, T, 24)).astype(np.float32)
    same = make_feats(1.6, 1, extra={"sec_levels": aligned, "sec_times": np.arange(T) * 0.02 + 0.01})
    b2 = batch_of(m, [same])
    torch.testing.assert_close(b2["sec_levels"][0, 0, :, :50], torch.from_numpy(aligned[:, :50]))
    with pytest.raises(InputError, match="sec_times"):
        batch_of(m, [make_feats(1.6, 1, extra={"sec_levels": levels, "sec_times": np.arange(T) * 0.02})])
    with pytest.raises(InputError, match="sec_levels"):
        batch_of(m, [make_feats(1.6, 1)])
    # the Whisper default ignores the extra entirely
    w = small_model(7)
    torch.testing.assert_close(batch_of(w, [f])["sec_levels"], batch_of(w, [make_feats(1.6, 1)])["sec_levels"])


# --------------------------------------------------------------------------- config and bad input

def test_config_round_trip_and_validation():
    cfg = MFSNConfig(**SMALL, chosen_level=0)
    again = MFSNConfig.from_dict(cfg.to_dict())
    assert again == cfg and isinstance(again.operations, tuple) and isinstance(again.sec_layers, tuple)
    for bad in (dict(labels=("a",)), dict(sec_source="wav"), dict(sec_layers=(1, 9, 4)),
                dict(chosen_level=3), dict(operations=("sum", "sum")), dict(operations=("max",)),
                dict(derived=True, derived_op=None)):
        with pytest.raises(InputError):
            MFSNConfig(**{**SMALL, **bad})


def test_bad_input_is_reported():
    m = small_model()
    b = batch_of(m, [make_feats(1.0, 1)])
    nan = {k: v.clone() for k, v in b.items()}
    nan["tec"][0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        m(nan)
    with pytest.raises(InputError, match="tec"):
        m({**b, "tec": b["tec"][..., :8]})
    with pytest.raises(InputError, match="lacks"):
        m({"tec": b["tec"]})
    with pytest.raises(InputError):
        batch_of(m, [make_feats(0.0, 1)])
