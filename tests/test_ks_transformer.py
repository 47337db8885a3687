"""KS-Transformer model: shapes, padding invariance, keep_ratio at inference, gradients,
empty transcripts, trace building, CCAB counts, config round trip, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ser_core.errors import InputError
from ser_core.models.base import MODELS, ModelOutput, build_model, concat_labels, to_trace
from ser_core.models.ks_transformer import NO_WORDS, KSTransformer, KSTransformerConfig
from ser_core.trace import AxisLabels

SMALL = dict(audio_dim=16, audio_layers=3, text_dim=12, d_model=32, heads=4, ff_dim=48,
             feature_layers=2, ccab_layers=2, fusion_layers=2)


def small_model(seed: int = 0, **overrides) -> KSTransformer:
    torch.manual_seed(seed)
    return KSTransformer(KSTransformerConfig(**{**SMALL, **overrides})).eval()


def make_batch(audio_lens, word_lens, Ta=None, Tw=None, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B = len(audio_lens)
    Ta = Ta or max(audio_lens)
    Tw = max(word_lens) if Tw is None else Tw
    audio = torch.randn(B, SMALL["audio_layers"], Ta, SMALL["audio_dim"], generator=g)
    text = torch.randn(B, Tw, SMALL["text_dim"], generator=g)
    am = torch.arange(Ta)[None, :] >= torch.tensor(audio_lens)[:, None]
    tm = torch.arange(Tw)[None, :] >= torch.tensor(word_lens)[:, None]
    audio[am[:, None, :].expand_as(audio[..., 0])] = 0.0
    text[tm] = 0.0
    return {"audio": audio, "audio_mask": am, "text": text, "text_mask": tm}


def frame_labels(n: int) -> AxisLabels:
    start = np.arange(n) * 0.02
    return AxisLabels("frames", [f"{s:.2f} s" for s in start], start, start + 0.02)


def word_labels(n: int) -> AxisLabels:
    start = np.arange(n) * 0.3
    return AxisLabels("words", [f"w{i}" for i in range(n)], start, start + 0.25)


def expected_names(cfg: KSTransformerConfig) -> list[str]:
    names = [f"audio_encoder.{i}" for i in range(cfg.feature_layers)]
    names += [f"text_encoder.{i}" for i in range(cfg.text_layers)]
    for d in ("ccab_a2t", "ccab_t2a"):
        for i in range(cfg.ccab_layers):
            names += [f"{d}.{i}.cross", f"{d}.{i}.self"]
    return names + [f"fusion.{i}" for i in range(cfg.fusion_layers)]


@pytest.mark.parametrize("record", [False, True])
def test_shapes_and_probabilities(record):
    m = small_model()
    out = m(make_batch([30, 22, 9], [5, 2, 1]), record=record)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (3, 4) and out.probs.shape == (3, 4)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(3))
    assert len(out.attentions) == (len(expected_names(m.config)) if record else 0)
    lw = out.extras["model_extras"]["audio_layer_weights"]
    assert lw.shape == (3,) and abs(float(lw.sum()) - 1) < 1e-6


@pytest.mark.parametrize("keep_ratio", [0.3, 0.5, 1.0])
def test_padding_invariance(keep_ratio):
    m = small_model(1)
    alone = make_batch([17], [4], seed=5)
    padded = make_batch([17, 40], [4, 9], Ta=45, Tw=11, seed=6)
    padded["audio"][0, :, :17] = alone["audio"][0]
    padded["text"][0, :4] = alone["text"][0]
    with torch.no_grad():
        p_alone = m(alone, keep_ratio=keep_ratio).probs[0]
        p_padded = m(padded, keep_ratio=keep_ratio).probs[0]
    torch.testing.assert_close(p_padded, p_alone, atol=1e-5, rtol=0)


def test_keep_ratio_changes_trace_keep_masks_without_retraining():
    m = small_model(2)
    batch = make_batch([40, 25], [8, 6])
    with torch.no_grad():
        lo = {r.name: r for r in m(batch, keep_ratio=0.2, record=True).attentions}
        hi = {r.name: r for r in m(batch, keep_ratio=0.8, record=True).attentions}
        full = {r.name: r for r in m(batch, keep_ratio=1.0, record=True).attentions}
        mixed = {r.name: r for r in m(batch, keep_ratio={"fusion": 1.0, "ccab": 0.2}, record=True).attentions}
    for name in lo:
        if name.startswith(("audio_encoder", "text_encoder")):
            assert lo[name].keep is None and lo[name].keep_ratio is None  # vanilla layers
            continue
        assert lo[name].keep_ratio == 0.2 and hi[name].keep_ratio == 0.8
        assert lo[name].keep.sum() < hi[name].keep.sum() <= full[name].keep.sum()
    valid = ~torch.cat([batch["audio_mask"], batch["text_mask"]], 1)
    assert torch.equal(full["fusion.1"].keep, valid[:, None, :].expand_as(full["fusion.1"].keep))
    assert torch.equal(mixed["fusion.0"].keep, full["fusion.0"].keep)
    assert mixed["ccab_t2a.1.self"].keep_ratio == 0.2


def test_gradients_reach_every_parameter():
    m = small_model(3, dropout=0.0, transformer_dropout=0.0).train()
    batch = make_batch([30, 12, 20], [6, 0, 3])  # item 1 has no words: the "no words" token learns too
    out = m(batch)
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 3])).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("record", [False, True])
def test_no_words_at_all(record):
    m = small_model()
    batch = make_batch([20, 14], [0, 0], Tw=0)
    assert batch["text"].shape == (2, 0, 12)
    out = m(batch, record=record)
    assert torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(2))
    if record:
        trace = to_trace(out, 1, {"audio": frame_labels(14), "text": AxisLabels("words", [])}, "ks_transformer")
        assert trace["text_encoder.0"].query_labels.names == [NO_WORDS]
        assert trace["fusion.0"].weights.shape[1:] == (15, 15)
        assert trace["fusion.0"].key_labels.names[-1] == NO_WORDS


def test_to_trace_crops_to_real_lengths_and_names_records():
    m = small_model(4)
    out = m(make_batch([33, 21], [7, 3]), record=True)
    labels = {"audio": frame_labels(21), "text": word_labels(3)}
    trace = to_trace(out, 1, labels, "ks_transformer")
    assert trace.model == "ks_transformer"
    assert trace.names() == expected_names(m.config)
    H = m.config.heads
    shapes = {
        "audio_encoder.1": (H, 21, 21), "text_encoder.0": (H, 3, 3),
        "ccab_a2t.0.cross": (H, 21, 3), "ccab_a2t.1.self": (H, 21, 21),
        "ccab_t2a.0.cross": (H, 3, 21), "ccab_t2a.1.self": (H, 3, 3), "fusion.1": (H, 24, 24),
    }
    for name, shape in shapes.items():
        rec = trace[name]
        assert rec.weights.shape == shape, name
        assert rec.key_scores.shape == (H, shape[2])
        assert isinstance(rec.weights, np.ndarray)
    rec = trace["ccab_a2t.0.cross"]
    assert (rec.query_modality, rec.key_modality, rec.kind) == ("audio", "text", "key-sparse")
    assert rec.keep.shape == (H, 3) and rec.keep.sum(-1).tolist() == [1] * H  # n = ⌊0.5·3⌋ = 1
    assert rec.key_labels.names == ["w0", "w1", "w2"] and len(rec.query_labels) == 21
    fused = trace["fusion.0"].key_labels
    assert fused.names == labels["audio"].names + labels["text"].names
    np.testing.assert_allclose(fused.start[-3:], labels["text"].start)
    # the records keep exactly what the layer used: unkept keys have 0 weight
    w, keep = trace["ccab_t2a.1.cross"].weights, trace["ccab_t2a.1.cross"].keep
    assert np.all(w[~np.broadcast_to(keep[:, None, :], w.shape)] == 0)
    assert trace.extras["probs"].shape == (4,)
    json.loads(trace.to_json(with_weights=False))  # JSON-able
    # the fused labels given explicitly are used as they are
    given = concat_labels(labels["audio"], labels["text"], kind="fused")
    t2 = to_trace(out, 1, {**labels, "fused": given}, "ks_transformer")
    assert t2["fusion.0"].query_labels is given
    with pytest.raises(ValueError):
        to_trace(out, 1, {"audio": frame_labels(20), "text": word_labels(3)}, "ks_transformer")


@pytest.mark.parametrize("ccab_layers", [0, 1, 2, 3, 4])
def test_ccab_count_builds_and_runs(ccab_layers):
    m = small_model(ccab_layers=ccab_layers, feature_layers=1, fusion_layers=1)
    out = m(make_batch([12, 8], [3, 2]), record=True)
    assert [r.name for r in out.attentions] == expected_names(m.config)
    assert torch.isfinite(out.probs).all()


def test_word_side_feature_layers_can_differ_from_the_speech_side():
    # text_feature_layers=0: each word's state stays its own until the key-sparse layers
    m = small_model(text_feature_layers=0)
    assert len(m.text_encoder.layers) == 0 and len(m.audio_encoder.layers) == SMALL["feature_layers"]
    batch = make_batch([12, 8], [3, 2])
    out = m(batch, record=True)
    assert [r.name for r in out.attentions] == expected_names(m.config)
    assert not any(r.name.startswith("text_encoder") for r in out.attentions)
    # a word's state before the interaction depends on that word alone
    changed = {k: v.clone() for k, v in batch.items()}
    changed["text"][0, 1] += 1.0
    t0, t1 = m.extract(batch).text, m.extract(changed).text
    torch.testing.assert_close(t0[0, [0, 2]], t1[0, [0, 2]])
    assert not torch.allclose(t0[0, 1], t1[0, 1])
    assert small_model(text_feature_layers=1).config.text_layers == 1
    assert small_model().config.text_layers == SMALL["feature_layers"]  # None: as the speech side
    with pytest.raises(InputError):
        KSTransformerConfig(**SMALL, text_feature_layers=-1)


def test_config_round_trip_and_registry():
    cfg = KSTransformerConfig(**SMALL, labels=("a", "b"), num_classes=2)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert KSTransformerConfig.from_dict(data) == cfg
    assert MODELS["ks_transformer"] is KSTransformer
    m = build_model("ks_transformer", data)
    assert isinstance(m, KSTransformer) and m.labels == ("a", "b")
    with pytest.raises(InputError):
        build_model("no_such_model", {})
    with pytest.raises(InputError):
        KSTransformerConfig.from_dict({"no_such_setting": 1})
    with pytest.raises(InputError):
        KSTransformerConfig(num_classes=3)  # 4 labels


def test_state_dict_round_trip_gives_same_output(tmp_path):
    m = small_model(5)
    torch.save(m.state_dict(), tmp_path / "m.pt")
    m2 = KSTransformer(KSTransformerConfig(**SMALL)).eval()
    m2.load_state_dict(torch.load(tmp_path / "m.pt"))
    batch = make_batch([15, 10], [4, 1])
    torch.testing.assert_close(m(batch).probs, m2(batch).probs)


def test_default_config_is_small():
    m = KSTransformer()
    n = sum(p.numel() for p in m.parameters())
    assert 1_000_000 < n < 5_000_000  # ~3.3 M parameters, ~13 MB in float32
    assert len(expected_names(m.config)) == 5 + 5 + 2 * 3 * 2 + 2


@pytest.mark.parametrize("change,keep_ratio", [
    (lambda b: b.pop("audio"), None),
    (lambda b: b.update(audio=b["audio"][:, 0]), None),  # no layer axis
    (lambda b: b.update(text=b["text"][..., :5]), None),
    (lambda b: b.update(audio_mask=torch.ones_like(b["audio_mask"])), None),  # no audio frames
    (lambda b: b.update(text_mask=b["text_mask"].long()), None),
    (lambda b: b["audio"].__setitem__((0, 0, 0, 0), float("nan")), None),
    (lambda b: None, 0.0),
    (lambda b: None, {"ccab_x": 0.5}),
    (lambda b: None, {"fusion": -1}),
])
def test_bad_input_raises_input_error(change, keep_ratio):
    m = small_model()
    batch = make_batch([10, 6], [3, 2])
    change(batch)
    with pytest.raises(InputError):
        m(batch, keep_ratio=keep_ratio)


def test_too_long_audio_raises_input_error():
    m = small_model(audio_max_len=20)
    with pytest.raises(InputError, match="too long"):
        m(make_batch([25], [2]))


# ------------------------------------------------------------------ frames averaged in groups


def _features(T: int, n_words: int = 3, seed: int = 0):
    from ser_core.asr import Word
    from ser_core.features import Features

    rng = np.random.default_rng(seed)
    words = [Word(f"w{i}", 0.3 * i, 0.3 * i + 0.25) for i in range(n_words)]
    return Features(key=f"f{seed}", audio=np.zeros(int(T * 320), np.float32), words=words,
                    speech=rng.standard_normal((SMALL["audio_layers"], T, SMALL["audio_dim"])).astype(np.float32),
                    frame_times=(np.arange(T) * 0.02 + 0.01).astype(np.float32),
                    text=rng.standard_normal((n_words, SMALL["text_dim"])).astype(np.float32))


def test_pooled_speech_averages_each_group_of_frames_and_their_times():
    from ser_core.features import pooled_axis, pooled_speech, speech_text_axis_labels

    feats = _features(7)
    assert pooled_speech(feats, 1) is feats
    pooled = pooled_speech(feats, 2)
    assert pooled.speech.shape == (SMALL["audio_layers"], 4, SMALL["audio_dim"])
    np.testing.assert_allclose(pooled.speech[:, 1], feats.speech[:, 2:4].mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(pooled.speech[:, 3], feats.speech[:, 6], rtol=1e-6)  # the last group: one frame
    np.testing.assert_allclose(pooled.frame_times, [0.02, 0.06, 0.10, 0.13], atol=1e-6)
    frames = pooled_axis(speech_text_axis_labels(feats)["audio"], 2)
    np.testing.assert_allclose(frames.start, [0.0, 0.04, 0.08, 0.12], atol=1e-6)
    np.testing.assert_allclose(frames.end, [0.04, 0.08, 0.12, 0.14], atol=1e-6)
    assert frames.names == ["0.02 s", "0.06 s", "0.10 s", "0.13 s"]


def test_audio_pool_gives_the_model_and_its_trace_half_the_frames():
    """audio_pool=2 is the same network fed Whisper's frames averaged in pairs: its output equals
    the unpooled model's on a pooled batch, and every axis a view or the deletion test reads
    (trace, attributions) has ceil(T / 2) frames spanning the same seconds."""
    from ser_core.attribution import model_adapter
    from ser_core.features import pooled_speech
    from ser_core.models.base import collate_batch, model_axis_labels

    plain, pooled = small_model(3), small_model(3, audio_pool=2)
    feats = [_features(9, seed=1), _features(6, seed=2)]
    batch = collate_batch(pooled, feats, "cpu")
    assert batch["audio"].shape[2] == 5 and batch["audio_mask"].sum(dim=1).tolist() == [0, 2]
    by_hand = collate_batch(plain, [pooled_speech(f, 2) for f in feats], "cpu")
    with torch.no_grad():
        np.testing.assert_allclose(pooled(batch).probs.numpy(), plain(by_hand).probs.numpy(), atol=1e-6)
    labels = model_axis_labels(pooled, feats[0])
    assert len(labels["audio"]) == 5 and labels["audio"].end[-1] == pytest.approx(0.18, abs=1e-6)
    with torch.no_grad():
        trace = to_trace(pooled(collate_batch(pooled, feats[:1], "cpu"), record=True), 0, labels, "ks_transformer")
    audio_side = [r for r in trace.records if r.key_modality == "audio"]
    assert audio_side and {np.asarray(r.weights).shape[-1] for r in audio_side} == {5}
    adapter = model_adapter(pooled, feats[0])
    assert adapter.n_frames == 5 and adapter.axes()["frames"].names == labels["audio"].names


def test_audio_pool_out_of_range_is_refused():
    with pytest.raises(InputError, match="audio_pool"):
        KSTransformerConfig(**SMALL, audio_pool=0)
