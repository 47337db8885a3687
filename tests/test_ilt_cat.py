"""ILT and CAT (log-mel models): collate, shapes for every fusion / PE / variant, structure of the
CAT ablations, gradients, padding invariance, attention pooling β, PE toggle, a tiny overfit,
axis labels and trace building, config round trip, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ser_core.encoders.spectral import log_mel
from ser_core.errors import InputError
from ser_core.features import Features
from ser_core.models.base import MODELS, build_model, to_trace
from ser_core.models.ilt_cat import (CAT, ILT, CATConfig, ILTConfig, MaskedBatchNorm,
                                     sinusoidal_encoding)

SR = 16000
# Small sizes for fast tests: 2 conv blocks (one CNN step = 4 frames), d_model 16.
SMALL = dict(cnn_channels=(4, 8), cnn_freq_pool=(2, 2), cnn_time_pool=(2, 2), d_model=16, heads=2,
             ff_dim=32, max_frames=120)
SMALL_ILT = dict(SMALL, transformer_layers=2)
SMALL_CAT = dict(SMALL, cross_layers=2)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Small tensors: one intra-op thread avoids OpenMP spin-waits when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def feats(seconds: float, seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    audio = 0.1 * np.sin(2 * np.pi * (150 + 50 * seed) * t) + 0.02 * rng.standard_normal(n)
    return Features(key=f"u{seed}", audio=audio.astype(np.float32), words=[],
                    speech=np.zeros((1, 1, 4), np.float32), frame_times=np.array([0.01]),
                    text=np.zeros((0, 4), np.float32))


def ilt(seed: int = 0, **overrides) -> ILT:
    torch.manual_seed(seed)
    return ILT(ILTConfig(**{**SMALL_ILT, **overrides})).eval()


def cat(seed: int = 0, **overrides) -> CAT:
    torch.manual_seed(seed)
    return CAT(CATConfig(**{**SMALL_CAT, **overrides})).eval()


def batch_of(model, seconds, seeds=None):
    """Features of utterances of the given lengths and the model's batch of them."""
    items = [feats(s, i if seeds is None else seeds[i]) for i, s in enumerate(seconds)]
    return items, type(model).collate(items, model.config, "cpu")


def warm_up_batch_norm(model, batch, steps: int = 3) -> None:
    """Move the running statistics away from their (0, 1) start so eval mode is non-trivial."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(batch)
    model.eval()


# --------------------------------------------------------------------------- collate

def test_collate_pads_to_7_5_s_cuts_longer_and_matches_log_mel():
    cfg = ILTConfig()  # paper sizes: 40 mels, 750 frames
    items = [feats(1.0, 0), feats(8.0, 1)]
    b = ILT.collate(items, cfg, "cpu")
    assert b["log_mel"].shape == (2, 40, 750) and b["log_mel_mask"].dtype == torch.bool
    assert (~b["log_mel_mask"]).sum(1).tolist() == [101, 750]  # 1 + n // 160 frames; cut at 7.5 s
    torch.testing.assert_close(b["log_mel"][0, :, :101], log_mel(items[0].audio))
    assert torch.all(b["log_mel"][0, :, 101:] == math.log(1e-10))  # the paper's zero padding, masked
    loose = ILT.collate(items[:1], ILTConfig(fixed_length=False), "cpu")
    assert loose["log_mel"].shape == (1, 40, 101)
    with pytest.raises(InputError, match="too short"):
        ILT.collate([feats(0.03)], cfg, "cpu")
    with pytest.raises(InputError):
        ILT.collate([], cfg, "cpu")


# --------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("fusion", ["concat", "plus", "trainable_plus"])
@pytest.mark.parametrize("pe", [False, True])
def test_ilt_shapes_each_fusion_and_pe(fusion, pe):
    m = ilt(fusion=fusion, positional_encoding=pe)
    _, b = batch_of(m, [0.5, 1.1, 0.8])  # fixed length: 120 frames
    assert b["log_mel"].shape == (3, 40, 120)
    out = m(b, record=True, keep_ratio=0.3, top_p=0.5)  # knobs ILT does not have are ignored
    assert out.logits.shape == (3, 4) and out.probs.shape == (3, 4)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(3))
    assert [r.name for r in out.attentions] == ["lstm.pooling", "transformer.0", "transformer.1"]
    K = 111 // 4  # longest item: 1 + 17600 // 160 = 111 frames (the rest is trimmed), pooled by 4
    assert out.attentions[0].weights.shape == (3, 1, 1, K)
    assert out.attentions[1].weights.shape == (3, 2, K, K)
    assert out.extras["padding_masks"]["cnn"].shape == (3, K)
    assert m.classifier[1].in_features == (32 if fusion == "concat" else 16)
    extras = out.extras["model_extras"]
    assert extras["fusion"] == fusion and extras["positional_encoding"] is pe
    if fusion == "concat":
        assert "fusion_alpha" not in extras
    else:
        a = extras["fusion_alpha"]
        assert abs(a["lstm"] + a["transformer"] - 1) < 1e-6
        assert a["lstm"] == pytest.approx(0.5)  # fixed α = 0.5 / W_A = W_B = 0 at the start
    assert hasattr(m, "fusion_weights") == (fusion == "trainable_plus")
    assert m(b).attentions == []


@pytest.mark.parametrize("variant", ["full", "ctol", "ltoc", "sum"])
@pytest.mark.parametrize("pe", [False, True])
def test_cat_shapes_each_variant(variant, pe):
    m = cat(variant=variant, positional_encoding=pe)
    _, b = batch_of(m, [0.5, 1.1])
    out = m(b, record=True)
    assert out.logits.shape == (2, 4)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(2))
    K, T = 111 // 4, (111 - 4) // 4 + 1  # CNN steps; 1-D conv (kernel = stride = 4) steps
    expected = {"full": ["ctol.0", "ctol.1", "ltoc.0", "ltoc.1"], "ctol": ["ctol.0", "ctol.1"],
                "ltoc": ["ltoc.0", "ltoc.1"], "sum": []}[variant]
    assert [r.name for r in out.attentions] == expected
    for r in out.attentions:
        assert r.kind == "cross"
        if r.name.startswith("ctol"):
            assert (r.query_modality, r.key_modality, r.weights.shape) == ("cnn", "lstm", (2, 2, K, T))
        else:
            assert (r.query_modality, r.key_modality, r.weights.shape) == ("lstm", "cnn", (2, 2, T, K))
    assert out.extras["padding_masks"]["cnn"].shape == (2, K)
    assert out.extras["padding_masks"]["lstm"].shape == (2, T)


def test_cat_ablations_differ_structurally():
    models = {v: cat(variant=v) for v in ("full", "ctol", "ltoc", "sum")}
    names = {v: {n.split(".")[0] for n, _ in m.named_parameters()} for v, m in models.items()}
    assert {"ctol", "ltoc"} <= names["full"]
    assert "ctol" in names["ctol"] and "ltoc" not in names["ctol"]
    assert "ltoc" in names["ltoc"] and "ctol" not in names["ltoc"]
    assert not {"ctol", "ltoc"} & names["sum"]
    assert names["sum"] == {"input_norm", "cnn", "lstm_conv", "lstm", "classifier"}
    count = {v: sum(p.numel() for p in m.parameters()) for v, m in models.items()}
    assert count["sum"] < count["ctol"] == count["ltoc"] < count["full"]
    # Same weights, different wiring → different outputs.
    full = models["full"]
    _, b = batch_of(full, [0.9, 0.6])
    probs = {}
    for v, m in models.items():
        m.load_state_dict(full.state_dict(), strict=False)
        probs[v] = m(b).probs
    for v in ("ctol", "ltoc", "sum"):
        assert not torch.allclose(probs[v], probs["full"], atol=1e-4), v


# --------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("make,kw", [
    (ilt, dict(fusion="concat")), (ilt, dict(fusion="plus", positional_encoding=True)),
    (ilt, dict(fusion="trainable_plus")),
    (cat, dict(variant="full")), (cat, dict(variant="ctol")), (cat, dict(variant="ltoc")),
    (cat, dict(variant="sum")),
])
def test_gradients_reach_every_parameter(make, kw):
    m = make(3, dropout=0.0, transformer_dropout=0.0, **kw).train()
    _, b = batch_of(m, [0.6, 1.0, 0.4])
    out = m(b)
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 3])).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    if kw.get("fusion") == "trainable_plus":
        assert m.fusion_weights.grad.abs().sum() > 0  # α (eq. 15–16) is learned


def test_trainable_plus_alpha_moves_with_a_single_optimiser():
    m = ilt(4, fusion="trainable_plus", dropout=0.0).train()
    _, b = batch_of(m, [0.6, 1.0])
    opt = torch.optim.AdamW(m.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(b).logits, torch.tensor([0, 2])).backward()
        opt.step()
    a = m.fusion_alpha().detach()
    assert float(a.sum()) == pytest.approx(1.0) and abs(float(a[0]) - 0.5) > 1e-3


# --------------------------------------------------------------------------- padding

@pytest.mark.parametrize("make", [ilt, cat])
def test_padding_does_not_change_an_item(make):
    m = make(5)
    short, longer = feats(0.55, 7), feats(1.15, 8)
    cfg_loose = type(m.config).from_dict({**m.config.to_dict(), "fixed_length": False})
    warm_up_batch_norm(m, type(m).collate([short, longer], m.config, "cpu"))
    with torch.no_grad():
        alone = m(type(m).collate([short], cfg_loose, "cpu"))  # no padding at all
        batched = m(type(m).collate([short, longer], cfg_loose, "cpu"))  # padded to the longer
        fixed = m(type(m).collate([short, longer], m.config, "cpu"))  # padded to max_frames
    torch.testing.assert_close(batched.probs[0], alone.probs[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(fixed.probs, batched.probs, atol=1e-5, rtol=0)


def _shifted(batch: dict, n_mels: int) -> dict[str, dict]:
    """The batch's log-mels with 12 dB more gain on every band (log g²P = log P + log g²), and
    with a different constant per band (a microphone's colouring)."""
    return {"gain": {**batch, "log_mel": batch["log_mel"] + math.log(10 ** 1.2)},
            "colouring": {**batch, "log_mel": batch["log_mel"] + torch.linspace(-2.0, 3.0, n_mels)[None, :, None]}}


@pytest.mark.parametrize("make", [ilt, cat])
@pytest.mark.parametrize("option, cancels, keeps", [
    ("utterance_mean_norm", ("gain", "colouring"), ()),  # each band's mean over the clip
    ("utterance_gain_norm", ("gain",), ("colouring",)),  # one number per clip: the spectrum's shape stays
])
def test_utterance_normalisation_cancels_what_it_says_and_ignores_padding(make, option, cancels, keeps):
    m = make(6, fixed_length=False, **{option: True})
    short, longer = feats(0.55, 7), feats(1.15, 8)
    batch = type(m).collate([short, longer], m.config, "cpu")
    warm_up_batch_norm(m, batch)
    shifted = _shifted(batch, m.config.n_mels)
    without = make(6, fixed_length=False)
    warm_up_batch_norm(without, batch)
    with torch.no_grad():
        plain = m(batch).probs
        torch.testing.assert_close(m(type(m).collate([short], m.config, "cpu")).probs[0], plain[0],
                                   atol=1e-5, rtol=0)  # padding not counted
        for what in cancels:
            torch.testing.assert_close(m(shifted[what]).probs, plain, atol=1e-5, rtol=0)
            assert not torch.allclose(without(shifted[what]).probs, without(batch).probs, atol=1e-3)
        for what in keeps:
            assert not torch.allclose(m(shifted[what]).probs, plain, atol=1e-3)


def test_masked_batch_norm_statistics_ignore_padding():
    torch.manual_seed(0)
    bn, ref = MaskedBatchNorm(3).train(), torch.nn.BatchNorm2d(3).train()
    x = torch.randn(2, 3, 5, 9)
    valid = torch.arange(9)[None, :] < torch.tensor([[9], [4]])
    x_garbage = x.clone()
    x_garbage[1, :, :, 4:] = 1e3  # padding holds anything
    y = bn(x_garbage, valid)
    real = torch.cat([x[0], x[1, :, :, :4]], dim=-1)[None]  # the real frames, side by side
    y_ref = ref(real)
    torch.testing.assert_close(torch.cat([y[0], y[1, :, :, :4]], dim=-1)[None], y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bn.running_mean, ref.running_mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bn.running_var, ref.running_var, atol=1e-5, rtol=1e-4)


def test_attention_pooling_beta_sums_to_one_over_real_steps_and_is_zero_on_padding():
    m = ilt(6)
    _, b = batch_of(m, [0.3, 1.1, 0.7])
    out = m(b, record=True)
    pooling = out.attentions[0]
    assert pooling.kind == "pooling" and (pooling.query_modality, pooling.key_modality) == ("pool", "cnn")
    beta = pooling.weights[:, 0, 0]  # [B, K]
    pad = out.extras["padding_masks"]["cnn"]
    assert (~pad).sum(1).tolist() == [31 // 4, 111 // 4, 71 // 4]
    torch.testing.assert_close(beta.sum(-1), torch.ones(3))
    assert torch.all(beta[pad] == 0) and torch.all(beta[~pad] > 0)


# --------------------------------------------------------------------------- positional encoding

def test_sinusoidal_encoding_is_eq_3_and_4():
    pe = sinusoidal_encoding(torch.tensor([0.0, 3.0]), 8)
    assert pe.shape == (2, 8)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0] * 4))
    torch.testing.assert_close(pe[1, 2], torch.tensor(math.sin(3 / 10000 ** (2 / 8))))
    torch.testing.assert_close(pe[1, 3], torch.tensor(math.cos(3 / 10000 ** (2 / 8))))


@pytest.mark.parametrize("make", [ilt, cat])
def test_positional_encoding_toggle_changes_the_output(make):
    on, off = make(7, positional_encoding=True), make(8, positional_encoding=False)
    off.load_state_dict(on.state_dict())  # same weights: PE has no parameters
    _, b = batch_of(on, [0.8, 0.5])
    assert not torch.allclose(on(b).probs, off(b).probs, atol=1e-5)


# --------------------------------------------------------------------------- training

@pytest.mark.parametrize("make,kw", [(ilt, dict(fusion="trainable_plus")), (ilt, dict(fusion="concat")),
                                     (cat, dict(variant="full"))])
def test_tiny_overfit_reduces_loss(make, kw):
    m = make(9, dropout=0.0, transformer_dropout=0.0, **kw).train()
    _, b = batch_of(m, [0.5, 0.8, 0.6, 1.0], seeds=[0, 1, 2, 3])
    y = torch.tensor([0, 1, 2, 3])
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(b).logits, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses


# --------------------------------------------------------------------------- labels and trace

@pytest.mark.parametrize("make", [ilt, cat])
def test_to_trace_crops_to_the_real_audio_with_matching_labels(make):
    m = make(10)
    items, b = batch_of(m, [1.1, 0.52])
    out = m(b, record=True)
    name = type(m).model_name
    for i, f in enumerate(items):
        labels = m.axis_labels(f)
        trace = to_trace(out, i, labels, name)
        assert trace.model == name and trace.names() == [r.name for r in out.attentions]
        pads = out.extras["padding_masks"]
        for mod, mask in pads.items():
            assert len(labels[mod]) == int((~mask[i]).sum()), mod  # labels match real positions
        for rec in trace.records:
            assert rec.weights.shape[1:] == (len(rec.query_labels), len(rec.key_labels))
            assert rec.query_labels is labels[rec.query_modality] and rec.key_labels is labels[rec.key_modality]
            if rec.kind != "pooling":
                np.testing.assert_allclose(rec.weights.sum(-1), 1.0, atol=1e-5)
        json.loads(trace.to_json())
    assert trace.extras["probs"].shape == (4,)
    with pytest.raises(ValueError):  # item 1's labels do not fit item 0's real length
        to_trace(out, 0, m.axis_labels(items[1]), name)


def test_ilt_trace_pooling_record_and_fusion_alpha():
    m = ilt(11, fusion="plus", alpha=0.7)
    items, b = batch_of(m, [0.9])
    trace = to_trace(m(b, record=True), 0, m.axis_labels(items[0]), "ilt")
    rec = trace["lstm.pooling"]
    assert rec.weights.shape == (1, 1, 91 // 4) and rec.query_labels.names == ["utterance"]
    assert rec.weights.sum() == pytest.approx(1.0, abs=1e-5)
    assert trace.extras["fusion_alpha"] == {"lstm": pytest.approx(0.7), "transformer": pytest.approx(0.3)}


def test_axis_label_times_follow_the_pooling_factors():
    f = feats(1.0)  # 16000 samples → 101 frames centred at 0, 10, ..., 1000 ms
    m = CAT(CATConfig())  # paper input: one CNN step = 8 frames; the 1-D conv: 4 frames
    labels = m.axis_labels(f)
    cnn, lstm = labels["cnn"], labels["lstm"]
    assert cnn.kind == lstm.kind == "frames"
    assert len(cnn) == 101 // 8 and len(lstm) == (101 - 4) // 4 + 1
    # CNN step j pools frames 8j .. 8j+7, each spanning ±5 ms around its centre.
    np.testing.assert_allclose(cnn.start[1:], np.arange(1, 12) * 0.08 - 0.005)
    np.testing.assert_allclose(cnn.end, np.arange(12) * 0.08 + 0.075)
    assert cnn.start[0] == 0.0 and cnn.names[1] == "0.075–0.155 s"
    np.testing.assert_allclose(lstm.end[:-1], np.arange(24) * 0.04 + 0.035)
    assert lstm.end[-1] <= 1.0 and np.all(np.diff(lstm.start) > 0)
    ilt_labels = ILT(ILTConfig()).axis_labels(feats(9.0))  # cut at 7.5 s = 750 frames
    assert len(ilt_labels["cnn"]) == 750 // 8 and ilt_labels["cnn"].end[-1] <= 7.5
    assert ilt_labels["pool"].end[0] == 7.5


# --------------------------------------------------------------------------- config, registry, input

def test_config_round_trip_registry_and_default_sizes():
    for name, cls, cfg in (("ilt", ILT, ILTConfig(fusion="plus", alpha=0.3, labels=("a", "b"), num_classes=2)),
                           ("cat", CAT, CATConfig(variant="ltoc", labels=("a", "b"), num_classes=2))):
        data = json.loads(json.dumps(cfg.to_dict()))
        assert type(cfg).from_dict(data) == cfg
        assert MODELS[name] is cls and cls.inputs == ("audio",)
        m = build_model(name, data)
        assert isinstance(m, cls) and m.labels == ("a", "b")
    n_ilt = sum(p.numel() for p in ILT().parameters())
    n_cat = sum(p.numel() for p in CAT().parameters())
    assert 300_000 < n_ilt < 2_000_000 and 500_000 < n_cat < 2_000_000


@pytest.mark.parametrize("cls,kw", [
    (ILTConfig, dict(fusion="sum")), (ILTConfig, dict(alpha=1.5)), (CATConfig, dict(variant="cnn")),
    (CATConfig, dict(lstm_conv_kernel=2, lstm_conv_stride=4)), (ILTConfig, dict(num_classes=3)),
    (ILTConfig, dict(d_model=30, heads=4)), (CATConfig, dict(cnn_time_pool=(2,))),
])
def test_bad_config_raises_input_error(cls, kw):
    with pytest.raises(InputError):
        cls(**kw)


@pytest.mark.parametrize("change", [
    lambda b: b.pop("log_mel"),
    lambda b: b.update(log_mel=b["log_mel"][:, :20]),
    lambda b: b.update(log_mel_mask=b["log_mel_mask"].long()),
    lambda b: b.update(log_mel_mask=torch.ones_like(b["log_mel_mask"])),  # no real frame
    lambda b: b["log_mel_mask"].__setitem__((0, 0), True),  # padding in front
    lambda b: b["log_mel"].__setitem__((0, 0, 0), float("nan")),
])
@pytest.mark.parametrize("make", [ilt, cat])
def test_bad_input_raises_input_error(make, change):
    m = make()
    _, b = batch_of(m, [0.5, 0.3])
    change(b)
    with pytest.raises(InputError):
        m(b)


@pytest.mark.parametrize("make", [ilt, cat])
def test_batch_norm_recalibration_matches_batch_statistics_without_dropout(make):
    """After recalibrating on one batch, evaluation on that batch uses its own (dropout-free)
    statistics: the same output as batch-statistics normalisation with dropout off."""
    from ser_core.models.ilt_cat import MaskedBatchNorm

    model = make(dropout=0.5)
    _, batch = batch_of(model, [2.0, 3.1, 4.0, 2.6])
    model.train()
    for _ in range(3):  # training-time statistics, with dropout inflating the variance
        model(batch)
    assert model.recalibrate_batch_norm([batch]) == 1
    assert model.training  # the mode it had is restored
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, MaskedBatchNorm))
    model.eval()
    with torch.no_grad():
        recalibrated = model(batch).logits
        for m in model.modules():  # batch statistics, dropout still off
            if isinstance(m, MaskedBatchNorm):
                m.train()
        batch_stats = model(batch).logits
    torch.testing.assert_close(recalibrated, batch_stats, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("make", [ilt, cat])
def test_spec_augment_masks_only_in_training_from_torch_seed(make):
    m = make(3, spec_freq_masks=2, spec_freq_width=6, spec_time_masks=2, spec_time_width=10, fixed_length=False)
    batch = type(m).collate([feats(1.0, 1), feats(0.7, 2)], m.config, "cpu")
    m.train()
    torch.manual_seed(5)
    x1, lengths = m._inputs(batch)
    torch.manual_seed(5)
    x2, _ = m._inputs(batch)
    torch.testing.assert_close(x1, x2)  # the run's seed fixes the masks
    torch.manual_seed(6)
    x3, _ = m._inputs(batch)
    assert not torch.equal(x1, x3)
    # whole mel bands and whole frame spans of each item's real frames set to 0, each item its own
    bands = [(x1[i, :, : int(lengths[i])] == 0).all(dim=1) for i in range(2)]
    spans = [(x1[i, :, : int(lengths[i])] == 0).all(dim=0) for i in range(2)]
    assert any(b.any() for b in bands) and any(s.any() for s in spans)  # widths are drawn from [0, width)
    assert not (torch.equal(bands[0], bands[1]) and torch.equal(spans[0], spans[1]))
    m.eval()  # evaluation and the app: no masks
    e1, _ = m._inputs(batch)
    e2, _ = m._inputs(batch)
    torch.testing.assert_close(e1, e2)
    assert not (e1[0, :, : int(lengths[0])] == 0).all(dim=1).any()
    plain = make(3, fixed_length=False).train()
    plain.load_state_dict(m.state_dict())
    torch.manual_seed(5)
    assert not (plain._inputs(batch)[0][0, :, : int(lengths[0])] == 0).all(dim=1).any()  # off by default


def test_spec_augment_settings_are_checked():
    with pytest.raises(InputError, match="SpecAugment"):
        CATConfig(**SMALL_CAT, spec_time_masks=-1)
