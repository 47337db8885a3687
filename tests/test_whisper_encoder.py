"""Whisper encoder converted from CTranslate2: equivalence with faster-whisper, shapes, cache, grads."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from ser_core.encoders import whisper as W
from ser_core.errors import InputError

SENTENCE = "The quick brown fox jumps over the lazy dog. I am really very happy to see you today."


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """Point cache_dir() at a private directory for this module (conversion happens there)."""
    root = tmp_path_factory.mktemp("ser_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SER_CACHE_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """A few seconds of real synthetic speech (espeak-ng, 22.05 kHz) resampled to 16 kHz."""
    import librosa
    import soundfile as sf

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    wav = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), SENTENCE], check=True, timeout=30)
    audio, sr = sf.read(wav, dtype="float32")
    return librosa.resample(audio, orig_sr=sr, target_sr=16000, res_type="soxr_hq").astype(np.float32)


@pytest.fixture(scope="module")
def encoder(cache_root) -> W.WhisperSpeechEncoder:
    return W.build_whisper_encoder("tiny.en", device="cpu")


@pytest.fixture(scope="module")
def ct2_model(cache_root):
    from faster_whisper import WhisperModel

    return WhisperModel(str(W.ctranslate2_model_dir("tiny.en")), device="cpu", compute_type="float32", cpu_threads=2)


def _cosine_per_frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _ct2_encode(model, mel: np.ndarray) -> np.ndarray:
    import ctranslate2

    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None], dtype=np.float32))
    return np.array(model.model.encode(features, to_cpu=True))[0]


# ---- reader ------------------------------------------------------------------------------------


def test_reader_reads_whisper_spec(cache_root):
    model = W.read_ctranslate2_model(W.whisper_model_sources("tiny.en"), prefix="encoder/")
    assert (model.binary_version, model.spec_name) == (W.CT2_BINARY_VERSION, "WhisperSpec")
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert model.dtypes["encoder/conv1/weight"] == "float16"
    assert model.tensors["encoder/conv1/weight"].shape == (384, 80, 3)
    assert all(name.startswith("encoder/") for name in model.tensors)  # the decoder was skipped
    assert "decoder/embeddings/weight" in model.shapes
    fields = W.whisper_config_fields(model)
    assert fields == {
        "num_mel_bins": 80, "d_model": 384, "encoder_layers": 4, "encoder_attention_heads": 6,
        "encoder_ffn_dim": 1536, "max_source_positions": 1500, "vocab_size": 51864, "decoder_layers": 4,
    }


def test_reader_split_file_equals_whole(tmp_path):
    """A model.bin cut into two parts at an arbitrary byte reads exactly like the whole file."""
    source = W.whisper_model_sources("tiny.en")[0]
    data = source.read_bytes()
    cut = len(data) // 2 + 12345
    (tmp_path / "p1").write_bytes(data[:cut])
    (tmp_path / "p2").write_bytes(data[cut:])
    whole = W.read_ctranslate2_model(source, prefix="encoder/layer_2")
    split = W.read_ctranslate2_model([tmp_path / "p1", tmp_path / "p2"], prefix="encoder/layer_2")
    assert whole.shapes == split.shapes and whole.aliases == split.aliases
    assert whole.tensors.keys() == split.tensors.keys() and len(whole.tensors) > 0
    for name in whole.tensors:
        np.testing.assert_array_equal(whole.tensors[name], split.tensors[name])


def test_reader_rejects_bad_files(tmp_path):
    source = W.whisper_model_sources("tiny.en")[0]
    with open(source, "rb") as fh:
        head = fh.read(4 << 20)
    (tmp_path / "truncated.bin").write_bytes(head)
    with pytest.raises(InputError, match="truncated"):
        W.read_ctranslate2_model(tmp_path / "truncated.bin")
    (tmp_path / "v5.bin").write_bytes((5).to_bytes(4, "little") + head[4:64])
    with pytest.raises(InputError, match="version 5"):
        W.read_ctranslate2_model(tmp_path / "v5.bin")
    with pytest.raises(InputError, match="not found"):
        W.read_ctranslate2_model(tmp_path / "missing.bin")


# ---- mel front-end -----------------------------------------------------------------------------


def test_mel_filterbank_is_librosa_slaney(encoder):
    import librosa

    ours = encoder.mel_spectrogram.mel_scale.fb.T.numpy()  # [80, 201]
    reference = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)
    np.testing.assert_allclose(ours, reference, atol=1e-6)


def test_log_mel_matches_faster_whisper(encoder, speech):
    from faster_whisper.feature_extractor import FeatureExtractor

    ours = encoder.log_mel(speech).numpy()
    theirs = FeatureExtractor()(speech)
    assert ours.shape == (80, len(speech) // 160)
    assert theirs.shape[1] == ours.shape[1] + 1  # faster-whisper's extra trailing padding frame
    diff = np.abs(ours - theirs[:, : ours.shape[1]]).max()
    print(f"log-mel max |ours - faster-whisper| = {diff:.2e}")
    assert diff < 1e-3
    assert torch.allclose(encoder.log_mel(torch.from_numpy(speech)), torch.from_numpy(ours))


# ---- equivalence with CTranslate2 --------------------------------------------------------------


def test_encoder_matches_ctranslate2(encoder, ct2_model, speech):
    from faster_whisper.audio import pad_or_trim

    mel = pad_or_trim(encoder.log_mel(speech).numpy())  # the same 3000-frame input for both
    reference = _ct2_encode(ct2_model, mel)
    with torch.no_grad():
        states = encoder(torch.from_numpy(mel)[None])
    ours = states[-1][0].numpy()
    assert ours.shape == reference.shape == (1500, 384)
    cosine = _cosine_per_frame(ours, reference)
    print(f"cosine vs CTranslate2 per frame: mean {cosine.mean():.7f}, min {cosine.min():.7f}")
    assert cosine.min() >= 0.999


# ---- shapes, times, chunking -------------------------------------------------------------------


@pytest.mark.parametrize("n_samples", [320, 16001, 16160, 24000 + 80])
def test_short_input_shapes_and_frame_times(encoder, speech, n_samples):
    audio = np.resize(speech, n_samples)
    hidden, times = encoder.encode(audio)
    expected_t = math.ceil((n_samples // 160) / 2)
    assert hidden.shape == (encoder.num_layers + 1, expected_t, encoder.dim)
    np.testing.assert_allclose(times, np.arange(expected_t) * 0.02)
    assert hidden.grad_fn is None and torch.isfinite(hidden).all()


@pytest.mark.parametrize("batch,frames", [(1, 1), (2, 7), (3, 100)])
def test_forward_counts_and_shapes(encoder, batch, frames):
    mel = torch.randn(batch, 80, frames) * 0.3
    with torch.no_grad():
        states = encoder(mel)
        last_only = encoder(mel, output_hidden_states=False)
    assert len(states) == encoder.num_layers + 1
    assert all(s.shape == (batch, math.ceil(frames / 2), encoder.dim) for s in states)
    assert len(last_only) == 1 and torch.equal(last_only[0], states[-1])


def test_padded_encode_is_the_padded_forward(encoder, speech):
    hidden, times = encoder.encode(speech, pad_to_30s=True)
    mel = torch.nn.functional.pad(encoder.log_mel(speech), (0, 3000 - len(speech) // 160))
    with torch.no_grad():
        full = torch.stack(encoder(mel[None]))[:, 0]
    assert full.shape[1] == 1500
    assert torch.allclose(hidden, full[:, : hidden.shape[1]], atol=1e-5)
    short, _ = encoder.encode(speech)
    assert short.shape == hidden.shape and not torch.allclose(short, hidden, atol=1e-3)


def test_longer_than_30s_is_windowed(encoder, speech):
    audio = np.resize(speech, 16000 * 30 + 16000)  # 31 s
    hidden, times = encoder.encode(audio)
    assert hidden.shape[1] == 1550 and times[-1] == pytest.approx(1549 * 0.02)
    first_window, _ = encoder.encode(audio[: 16000 * 30])
    assert first_window.shape[1] == 1500


def test_attentions_are_row_stochastic(encoder):
    mel = torch.randn(2, 80, 40) * 0.3
    with torch.no_grad():
        states, attentions = encoder.forward_with_attentions(mel)
    assert len(attentions) == encoder.num_layers
    for a in attentions:
        assert a.shape == (2, encoder.num_heads, 20, 20)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, encoder.num_heads, 20))
    # forward runs torch's fused attention kernel, this the eager one: the same states up to rounding
    torch.testing.assert_close(torch.stack(states), torch.stack(encoder(mel)), atol=1e-4, rtol=1e-4)


# ---- fine-tuning ---------------------------------------------------------------------------------


def test_gradients_flow_when_training(cache_root, speech):
    model = W.build_whisper_encoder("tiny.en", device="cpu")  # private copy: the shared one stays frozen
    audio = speech[:16000]
    hidden, _ = model.eval().encode(audio)
    assert not hidden.requires_grad  # eval: no_grad
    model.train()
    hidden, _ = model.encode(audio)
    hidden[1:].pow(2).mean().backward()
    for param in (model.encoder.conv1.weight, model.encoder.layers[0].self_attn.k_proj.weight,
                  model.encoder.layers[-1].fc2.weight, model.encoder.layer_norm.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert not model.encoder.embed_positions.weight.requires_grad  # sinusoids stay fixed, as in Whisper


# ---- conversion cache --------------------------------------------------------------------------


def test_cache_is_reused_and_corruption_rebuilt(tmp_path, monkeypatch, speech):
    monkeypatch.setenv("SER_CACHE_DIR", str(tmp_path / "cache"))
    first = W.build_whisper_encoder("tiny.en", device="cpu")
    assert first.conversion_seconds is not None
    fingerprint = W.source_fingerprint(W.whisper_model_sources("tiny.en"))
    weights, meta = W.encoder_cache_paths("tiny.en", fingerprint)
    assert weights.is_file() and meta.is_file()
    assert json.loads(meta.read_text())["config"]["d_model"] == 384
    stamp = (weights.stat().st_mtime_ns, meta.stat().st_mtime_ns)
    audio = speech[:8000]
    reference, _ = first.encode(audio)

    second = W.build_whisper_encoder("tiny.en", device="cpu")
    assert second.conversion_seconds is None  # loaded from the cache, not converted again
    assert (weights.stat().st_mtime_ns, meta.stat().st_mtime_ns) == stamp
    assert second.identity == first.identity == f"whisper-tiny.en:{fingerprint[:8]}"

    # Corrupt tensor bytes (header intact): caught by the recorded sha256, rebuilt.
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    weights.write_bytes(bytes(raw))
    rebuilt = W.build_whisper_encoder("tiny.en", device="cpu")
    assert rebuilt.conversion_seconds is not None
    torch.testing.assert_close(rebuilt.encode(audio)[0], reference)

    # Truncated weights and unreadable JSON are rebuilt too.
    weights.write_bytes(weights.read_bytes()[:1000])
    assert W.build_whisper_encoder("tiny.en", device="cpu").conversion_seconds is not None
    meta.write_text("{not json")
    assert W.build_whisper_encoder("tiny.en", device="cpu").conversion_seconds is not None
    assert W.build_whisper_encoder("tiny.en", device="cpu").conversion_seconds is None
    assert not [p for p in weights.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_changed_source_reconverts(tmp_path, monkeypatch):
    monkeypatch.setenv("SER_CACHE_DIR", str(tmp_path / "cache"))
    model_dir = tmp_path / "my-whisper"
    model_dir.mkdir()
    shutil.copyfile(W.whisper_model_sources("tiny.en")[0], model_dir / "model.bin")
    a = W.build_whisper_encoder(str(model_dir), device="cpu")
    b = W.build_whisper_encoder(str(model_dir), device="cpu")
    assert a.conversion_seconds is not None and b.conversion_seconds is None
    st = (model_dir / "model.bin").stat()
    os.utime(model_dir / "model.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    c = W.build_whisper_encoder(str(model_dir), device="cpu")
    assert c.conversion_seconds is not None and c.identity != a.identity
    cached = sorted(p.name for p in (tmp_path / "cache" / "whisper").rglob("encoder-*"))
    assert len(cached) == 2  # the stale conversion was removed


def test_load_is_cached_per_process_and_bundle(cache_root):
    a = W.load_whisper_encoder("tiny.en", device="cpu")
    assert a is W.load_whisper_encoder("tiny.en", device=torch.device("cpu"))
    assert a is W.WHISPER_TINY_EN.get_model(device="cpu")
    assert not a.training
    assert (W.WHISPER_TINY_EN.sample_rate, W.WHISPER_TINY_EN.frame_rate) == (a.sample_rate, a.frame_rate) == (16000, 50.0)
    assert W.WHISPER_TINY_EN.available()


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "audio,message",
    [
        (np.zeros(16000, dtype=np.int16), "float samples"),
        (np.full(16000, np.nan, dtype=np.float32), "NaN"),
        (np.zeros((2, 16000), dtype=np.float32), "mono"),
        (np.zeros(100, dtype=np.float32), "too short"),
        ([0.0] * 16000, "numpy array"),
    ],
)
def test_bad_audio_raises_input_error(encoder, audio, message):
    with pytest.raises(InputError, match=message):
        encoder.encode(audio)


def test_bad_mel_and_names_raise_input_error(encoder):
    for shape in [(1, 64, 100), (1, 80, 3001), (1, 80, 0), (80,)]:
        with pytest.raises(InputError, match="log-mel"):
            encoder(torch.zeros(shape))
    with pytest.raises(InputError, match="Unknown Whisper model"):
        W.whisper_model_sources("large-v9")
    with pytest.raises(InputError, match="device"):
        W.load_whisper_encoder("tiny.en", device="not-a-device")


# ---- Whisper base (optional packages, slower) ----------------------------------------------------


@pytest.mark.slow
def test_base_matches_ctranslate2(cache_root, speech):
    if not W.WHISPER_BASE.available():
        pytest.skip(f"Whisper base not installed ({W.WHISPER_BASE_PIP})")
    from faster_whisper import WhisperModel
    from faster_whisper.audio import pad_or_trim

    model = W.build_whisper_encoder("base", device="cpu")
    assert (model.num_layers, model.dim) == (6, 512)
    mel = pad_or_trim(model.log_mel(speech).numpy())
    ct2 = WhisperModel(str(W.ctranslate2_model_dir("base")), device="cpu", compute_type="float32", cpu_threads=2)
    reference = _ct2_encode(ct2, mel)
    with torch.no_grad():
        ours = model(torch.from_numpy(mel)[None])[-1][0].numpy()
    cosine = _cosine_per_frame(ours, reference)
    print(f"base cosine vs CTranslate2 per frame: mean {cosine.mean():.7f}, min {cosine.min():.7f}")
    assert cosine.min() >= 0.999
