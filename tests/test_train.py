"""Features cache, training smoke test (2 epochs on a tiny generated corpus), resume, evaluate,
checkpoint round trip and mismatch, and the Analyzer's model-only rerun."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ser_core.checkpoint import load_checkpoint, read_meta, save_checkpoint
from ser_core.errors import InputError
from ser_core.features import FeatureExtractor, collate_speech_text, content_key

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
TINY = {"d_model": 32, "ff_dim": 64, "feature_layers": 1, "ccab_layers": 1, "fusion_layers": 1}


def _train(corpus, out: Path, epochs: int, resume: bool = False, **options):
    from ser_core.train import TrainConfig, train

    cfg = TrainConfig(root=str(corpus), out=str(out), epochs=epochs, batch_size=8, resume=resume,
                      model_args=TINY, device="cpu", **options)
    return train(cfg, progress=False, log=lambda *_: None)


def test_features_are_cached_by_content(cache, corpus):
    from ser_core.audio import load_audio

    wav = next((corpus.parent / "wav").glob("*.wav"))
    audio = load_audio(wav)
    fx = FeatureExtractor(device="cpu")
    first = fx.extract(audio, transcript="hello there")
    assert first.speech.shape[0] == fx.speech_layers and first.text.shape == (2, fx.text_dim)
    assert [w.text for w in first.words] == ["hello", "there"]
    files = list((cache / "features").rglob("*.safetensors"))
    assert len(files) == 1 and fx.identity in str(files[0])
    # a new extractor (a new process, say) reads the disk cache instead of encoding again
    fresh = FeatureExtractor(device="cpu")
    fresh._compute = lambda *a, **k: pytest.fail("recomputed a cached utterance")
    again = fresh.extract(audio, transcript="hello there")
    np.testing.assert_allclose(again.speech, first.speech, rtol=2e-3, atol=2e-3)  # stored as float16
    assert content_key(audio, "hello there") != content_key(audio, "hello") != content_key(audio[1:], "hello")


def test_collate_pads_and_masks(cache, corpus):
    from ser_core.audio import load_audio

    fx = FeatureExtractor(device="cpu")
    wavs = sorted((corpus.parent / "wav").glob("*.wav"))[:2]
    feats = [fx.extract(load_audio(w), transcript=t) for w, t in zip(wavs, ["one two three", "four"])]
    batch = collate_speech_text(feats)
    T = max(f.speech.shape[1] for f in feats)
    assert batch["audio"].shape == (2, fx.speech_layers, T, fx.speech_dim)
    assert batch["text"].shape == (2, 3, fx.text_dim)
    assert batch["text_mask"].tolist() == [[False] * 3, [False, True, True]]
    assert batch["audio_mask"][0].sum() + batch["audio_mask"][1].sum() == T - min(f.speech.shape[1] for f in feats)


def test_two_epoch_training_writes_checkpoint_metrics_and_resumes(cache, corpus, tmp_path):
    out = tmp_path / "tiny.safetensors"
    # batches grouped by length, and the speech-layer mixing weights on their own learning rate
    options = {"group_by_length": True, "layer_mix_lr": 0.05}
    meta = _train(corpus, out, epochs=1, **options)
    run = tmp_path / "tiny.run"
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    meta = _train(corpus, out, epochs=2, resume=True, **options)  # continues at epoch 2
    assert meta["training"]["group_by_length"] and meta["training"]["layer_mix_lr"] == 0.05
    mix = load_checkpoint(out)[0].audio_layer_mix.weights.detach()
    assert mix.abs().max() > 0.02  # one or two Adam steps at the network's 5e-4 move them < 0.001
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) for r in rows)
    assert set(meta["metrics"]["test"]) >= {"wa", "ua", "macro_f1", "n"}
    assert meta["training"]["labels"] == ["ang", "hap", "neu", "sad"]
    assert (out.with_suffix(".json")).exists() and read_meta(out)["model"] == "ks_transformer"
    model, _ = load_checkpoint(out)
    assert not model.training

    from ser_core.scoring import evaluate

    result = evaluate(str(out), "manifest", str(corpus), progress=False)
    cm = np.array(result["confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == result["n"] == 4
    assert result["wa"] == pytest.approx(np.trace(cm) / cm.sum())

    from ser_core.pipeline import Analyzer

    analyzer = Analyzer(out, device="cpu")
    wav = next((corpus.parent / "wav").glob("*.wav"))
    analysis = analyzer.analyze(str(wav))
    assert analysis.probs.shape == (4,) and abs(analysis.probs.sum() - 1) < 1e-5
    analyzer.extractor.extract = lambda *a, **k: pytest.fail("a rerun must not re-encode")
    sparse = analysis.rerun(keep_ratio=0.1)
    dense = analysis.rerun(keep_ratio=1.0)
    rec_s, rec_d = sparse.trace["ccab_a2t.0.cross"], dense.trace["ccab_a2t.0.cross"]
    assert rec_s.keep.sum() < rec_d.keep.sum() and rec_d.keep.all()
    assert rec_s.keep_ratio == 0.1


def test_fine_tuning_keeps_the_checkpoints_settings_and_encoders(cache, corpus, tmp_path):
    """Fine-tuning with no settings given continues the checkpoint's model: its size, its word-level
    stack and its text encoder (the shipped default's are not the trainer's defaults), every tensor
    loaded; a setting that would resize it is refused, from the trainer and from the Train page."""
    from ser_core.jobs import start_training
    from ser_core.models import build_model
    from ser_core.train import TrainConfig, check_fine_tune, train

    fx = FeatureExtractor(device="cpu")
    own = {"audio_dim": fx.speech_dim, "audio_layers": fx.speech_layers, "text_dim": fx.text_dim,
           "num_classes": 4, "labels": ("ang", "hap", "neu", "sad"), **TINY, "text_feature_layers": 0}
    source = build_model("ks_transformer", own)
    src = save_checkpoint(tmp_path / "src.safetensors", source, {
        "model": "ks_transformer", "config": source.config.to_dict(),
        "encoders": {"speech": "whisper:tiny.en", "text": "minilm-isolated", "sec": None}})
    logs: list[str] = []
    cfg = TrainConfig(root=str(corpus), out=str(tmp_path / "ft.safetensors"), epochs=1, batch_size=8,
                      device="cpu", init_from=str(src))
    meta = train(cfg, progress=False, log=logs.append)
    assert meta["encoders"]["text"] == "minilm-isolated"
    assert meta["config"]["d_model"] == TINY["d_model"] and meta["config"]["text_feature_layers"] == 0
    n = len(source.state_dict())
    assert f"initialised {n}/{n} tensors" in " ".join(logs)
    # a setting of the run still wins when it keeps the size (a keep ratio)
    check_fine_tune(str(src), {"ccab_keep_ratio": 0.2})
    with pytest.raises(InputError, match="does not fit"):
        check_fine_tune(str(src), {"d_model": 64})
    with pytest.raises(InputError, match="does not fit"):
        train(TrainConfig(root=str(corpus), out=str(tmp_path / "bad.safetensors"), epochs=1, batch_size=8,
                          device="cpu", init_from=str(src), model_args={"d_model": 64}),
              progress=False, log=lambda *_: None)
    with pytest.raises(InputError, match="does not fit"):  # the Train page: refused before any job starts
        start_training("resized", root=str(corpus), init_from=str(src), model_args="d_model=64", check_data=False)


def test_checkpoint_that_does_not_match_gives_input_error(tmp_path):
    from ser_core.models import build_model

    cfg = {"audio_dim": 16, "audio_layers": 2, "text_dim": 8, "num_classes": 4, **TINY}
    model = build_model("ks_transformer", cfg)
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"model": "ks_transformer", "config": model.config.to_dict()})
    bad_cfg = dict(model.config.to_dict(), d_model=64, ff_dim=128)
    meta = {"model": "ks_transformer", "config": bad_cfg}
    # weights of one architecture with the config of another
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "bad.safetensors"), metadata={"ser_meta": json.dumps(meta)})
    with pytest.raises(InputError, match="does not match"):
        load_checkpoint(tmp_path / "bad.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.safetensors")
    half = save_checkpoint(tmp_path / "h.safetensors", model, {"model": "ks_transformer", "config": model.config.to_dict()}, half=True)
    loaded, _ = load_checkpoint(half)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == a.dtype
        torch.testing.assert_close(a.float(), b.float(), atol=1e-2, rtol=1e-2)
    assert path.exists()


SMALL = {
    "mesm": {"block_channels": [8, 8, 8], "stem_channels": 8, "d_model": 16, "ff_dim": 32, "max_faces": 4},
    "fe2e": {"block_channels": [8, 8, 8], "stem_channels": 8, "d_model": 16, "ff_dim": 32, "max_faces": 4},
    "mfsn": {},
    "ilt": {},
    "cat": {},
}


@pytest.mark.parametrize("model", sorted(SMALL))
def test_two_epoch_training_of_every_model_then_analyze(cache, corpus, tmp_path, model):
    """Each paper's model through the same trainer, checkpoint and Analyzer (smoke test)."""
    from ser_core.pipeline import Analyzer
    from ser_core.train import TrainConfig, train

    out = tmp_path / f"{model}.safetensors"
    cfg = TrainConfig(model=model, root=str(corpus), out=str(out), epochs=2, batch_size=8,
                      model_args=SMALL[model], device="cpu")
    meta = train(cfg, progress=False, log=lambda *_: None)
    rows = [json.loads(l) for l in (tmp_path / f"{model}.run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(np.isfinite(r["train_loss"]) for r in rows)
    assert meta["model"] == model and set(meta["metrics"]["test"]) >= {"wa", "ua", "macro_f1"}
    analyzer = Analyzer(out, device="cpu")
    wav = next((corpus.parent / "wav").glob("*.wav"))
    analysis = analyzer.analyze(str(wav))
    assert analysis.probs.shape == (4,) and abs(analysis.probs.sum() - 1) < 1e-5
    if model == "fe2e":  # the dense baseline has no attention layer, only FLOPs
        assert not analysis.trace.records and analysis.trace.extras["flops"].sum() > 0
    else:
        assert analysis.trace.records, "every attention model records its maps"
    again = analysis.rerun(top_p=1.0, keep_ratio=1.0)
    assert again.probs.shape == (4,)
