"""Local transformers encoders: tiny models built from configs, saved, loaded back."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from ser_core.encoders.hf import HFSpeechEncoder, HFTextEncoder
from ser_core.errors import InputError

transformers = pytest.importorskip("transformers")

# Two conv layers: strides 5*4 = 20 samples per frame (800 frames/s at 16 kHz);
# receptive field 1 + (10-1) + (8-1)*5 = 45 samples.
TINY_CONV = dict(conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8))
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    **TINY_CONV,
)

SPEECH_MODELS = {
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model"),
    "hubert": ("HubertConfig", "HubertModel"),
    "wavlm": ("WavLMConfig", "WavLMModel"),
    "data2vec-audio": ("Data2VecAudioConfig", "Data2VecAudioModel"),
}


def _save_speech_model(kind: str, directory, with_feature_extractor: bool):
    config_cls, model_cls = (getattr(transformers, n) for n in SPEECH_MODELS[kind])
    torch.manual_seed(0)
    model = model_cls(config_cls(**TINY))
    model.save_pretrained(directory)
    if with_feature_extractor:
        transformers.Wav2Vec2FeatureExtractor(
            sampling_rate=16000, do_normalize=True, return_attention_mask=False
        ).save_pretrained(directory)
    return model


@pytest.mark.parametrize("kind", sorted(SPEECH_MODELS))
def test_speech_encoder_shapes_times_attentions(kind, tmp_path):
    _save_speech_model(kind, tmp_path, with_feature_extractor=(kind == "wav2vec2"))
    enc = HFSpeechEncoder.from_dir(tmp_path)
    assert enc.dim == 32 and enc.num_layers == 2
    assert enc.frame_rate == pytest.approx(16000 / 20)
    assert enc.receptive_field == 45
    assert (enc.feature_extractor is not None) == (kind == "wav2vec2")
    assert enc.identity.startswith(enc.model.config.model_type)

    audio = np.random.default_rng(1).standard_normal(1600).astype(np.float32) * 0.1  # 0.1 s
    with torch.no_grad():
        hidden, times, att = enc.encode(audio, output_attentions=True)
    # Frames from the conv arithmetic: floor((N - k) / s) + 1 per layer.
    n = 1600
    for k, s in zip(TINY_CONV["conv_kernel"], TINY_CONV["conv_stride"]):
        n = (n - k) // s + 1
    assert hidden.shape == (3, n, 32)
    assert times.shape == (n,)
    assert np.allclose(np.diff(times), 1 / enc.frame_rate)
    assert times[0] == pytest.approx(45 / 2 / 16000)
    assert times[-1] < len(audio) / 16000
    assert att is not None and att.shape == (2, 2, n, n)
    assert torch.allclose(att.sum(-1), torch.ones(2, 2, n), atol=1e-5)


def test_speech_encoder_normalises_without_feature_extractor(tmp_path):
    _save_speech_model("wav2vec2", tmp_path, with_feature_extractor=False)
    enc = HFSpeechEncoder.from_dir(tmp_path)
    audio = np.random.default_rng(2).standard_normal(2000).astype(np.float32)
    with torch.no_grad():
        a = enc.encode(audio)[0]
        b = enc.encode(audio * 5 + 0.3)[0]  # same after zero-mean unit-variance
    assert torch.allclose(a, b, atol=1e-4)


def test_speech_encoder_gradients_flow(tmp_path):
    _save_speech_model("hubert", tmp_path, with_feature_extractor=False)
    enc = HFSpeechEncoder.from_dir(tmp_path)
    enc.train()
    hidden, _ = enc.encode(np.random.default_rng(3).standard_normal(1600).astype(np.float32))
    hidden[-1].pow(2).mean().backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_speech_encoder_bad_input(tmp_path):
    _save_speech_model("wav2vec2", tmp_path, with_feature_extractor=False)
    enc = HFSpeechEncoder.from_dir(tmp_path)
    with pytest.raises(InputError, match="too short"):
        enc.encode(np.zeros(20, np.float32))
    with pytest.raises(InputError, match="NaN"):
        enc.encode(np.full(1600, np.nan, np.float32))
    with pytest.raises(InputError, match="mono"):
        enc.encode(np.zeros((2, 1600), np.float32))


def test_bad_directories_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="not a model directory"):
        HFSpeechEncoder.from_dir(tmp_path / "missing")
    with pytest.raises(InputError, match="not a model directory"):
        HFTextEncoder.from_dir(tmp_path)  # exists, but empty
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError):
        HFSpeechEncoder.from_dir(tmp_path)


def test_text_model_is_not_a_speech_encoder(tiny_roberta_dir):
    with pytest.raises(InputError, match="not a speech encoder"):
        HFSpeechEncoder.from_dir(tiny_roberta_dir)


def test_speech_model_is_not_a_text_encoder(tmp_path):
    _save_speech_model("wav2vec2", tmp_path, with_feature_extractor=True)
    with pytest.raises(InputError, match="tokenizer"):
        HFTextEncoder.from_dir(tmp_path)


# ---------------------------------------------------------------- text (RoBERTa, byte-level BPE)

CORPUS = [
    "I am really happy today",
    "the weather was unbelievably nice",
    "she was angry and sad at the same time",
]


@pytest.fixture(scope="module")
def tiny_roberta_dir(tmp_path_factory):
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 5, vocab_size=300, min_frequency=1, special_tokens=specials)
    bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    tok = transformers.RobertaTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>",
    )
    d = tmp_path_factory.mktemp("tiny_roberta")
    tok.save_pretrained(d)
    cfg = transformers.RobertaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=34, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    transformers.RobertaModel(cfg).save_pretrained(d)
    return d


def test_roberta_text_encoder_pools_pieces_to_words(tiny_roberta_dir):
    enc = HFTextEncoder.from_dir(tiny_roberta_dir)
    assert enc.dim == 32 and enc.num_layers == 2
    assert enc.max_length == 32  # 34 positions minus RoBERTa's padding offset
    words = ["Really", "unbelievably", "happy!"]
    with torch.no_grad():
        states, att = enc.encode_words(words, output_attentions=True)
        layers = enc.encode_words(words, all_layers=True)
        batch = enc.tokenizer(words, is_split_into_words=True, return_tensors="pt")
        last = enc.model(**batch).last_hidden_state[0]
    assert states.shape == (3, 32) and layers.shape == (3, 3, 32)
    assert torch.allclose(layers[-1], states, atol=1e-5)
    ids = batch.word_ids(0)
    pieces = [i for i, w in enumerate(ids) if w == 1]
    assert len(pieces) > 1, "the test needs a multi-piece word"
    assert torch.allclose(states[1], last[pieces].mean(0), atol=1e-5)
    assert att.shape == (2, 2, 3, 3)
    assert bool((att.sum(-1) <= 1 + 1e-5).all()) and bool((att >= 0).all())


def test_roberta_text_encoder_windows_long_input(tiny_roberta_dir):
    enc = HFTextEncoder.from_dir(tiny_roberta_dir)
    words = " ".join(CORPUS * 4).split()  # far more than 32 pieces
    wins = enc.windows(words)
    assert len(wins) > 1 and sum(wins, []) == words
    with torch.no_grad():
        states = enc.encode_words(words)
        second = enc.encode_words(wins[1])
    assert states.shape == (len(words), 32)
    start = len(wins[0])
    assert torch.allclose(states[start : start + len(wins[1])], second, atol=1e-5)


def test_hub_name_is_not_loaded_by_from_dir():
    with pytest.raises(InputError, match="not a model directory"):
        HFTextEncoder.from_dir("roberta-base")


def test_mfsn_reads_its_second_encoder_levels_from_a_local_model(tmp_path, monkeypatch):
    """MFSN's SEC from a local wav2vec2-style directory: the extractor stores early/middle/last
    levels with their times, and the model (sec_source="extra") trains on them."""
    from ser_core.asr import Word
    from ser_core.features import FeatureExtractor
    from ser_core.models import build_model
    from ser_core.models.base import collate_batch, feature_extras

    monkeypatch.setenv("SER_CACHE_DIR", str(tmp_path / "cache"))
    directory = tmp_path / "w2v"
    _save_speech_model("wav2vec2", directory, with_feature_extractor=True)
    fx = FeatureExtractor(device="cpu", sec_encoder=f"hf:{directory}")
    audio = (0.1 * np.random.default_rng(0).standard_normal(16000 * 2)).astype(np.float32)
    model = build_model("mfsn", {"sec_source": "extra", "sec_dim": fx.sec.dim})
    assert "sec_levels" in feature_extras(model)
    feats = fx.extract(audio, words=[Word("hi", 0.1, 0.4)], extras=feature_extras(model))
    levels, times = feats.extra["sec_levels"], feats.extra["sec_times"]
    assert levels.shape[0] == 3 and levels.shape[1] == len(times) and levels.shape[2] == fx.sec.dim
    assert np.all(np.diff(times) > 0)
    model.train()
    out = model(collate_batch(model, [feats, feats], "cpu"))
    out.logits.sum().backward()
    assert out.logits.shape == (2, 4)
