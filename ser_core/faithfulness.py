"""Does key-sparse attention keep the words that carry the emotion?

The demo corpus records, for every utterance, which words carry emotion (``emotion_words`` with
their word index). For each test utterance that has such a word we ask every text-side
key-sparse layer (a record whose keys are words and which has a keep mask) whether one of those
words is among its kept keys (kept by at least half of the heads). Three shares are reported:

* ``key_sparse``: the model at its keep_ratio, the keep masks it actually used;
* ``vanilla_top_half``: the same model with keep_ratio = 1 (vanilla attention), keeping, per
  layer and head, the top half of keys by the same column-sum score;
* ``chance``: the expected share for a random set of the same size as the key-sparse one.
"""

from __future__ import annotations

import json
from math import comb
from pathlib import Path
from typing import Any

import numpy as np

from .data import load_corpus
from .errors import InputError
from .kept import most_heads
from .paths import default_corpus_dir
from .trace import AttentionRecord


def text_key_records(records: list[AttentionRecord]) -> list[AttentionRecord]:
    """Key-sparse layers whose keys are words."""
    return [r for r in records if r.key_modality == "text" and r.kind == "key-sparse"]


def top_half(scores: np.ndarray) -> np.ndarray:
    """[heads, Tk] scores → [heads, Tk] bool keeping each head's top ⌊L/2⌋ (at least 1) keys."""
    L = scores.shape[-1]
    n = max(1, L // 2)
    threshold = np.sort(scores, axis=-1)[:, L - n][:, None]
    return scores >= threshold


def chance_of_hit(L: int, n_kept: int, n_emotion: int) -> float:
    """P(a random n_kept-subset of L keys contains at least one of n_emotion given keys)."""
    if n_kept >= L:
        return 1.0
    return 1.0 - comb(L - n_emotion, n_kept) / comb(L, n_kept)


def faithfulness_report(
    checkpoint: str | Path,
    root: str | Path | None = None,
    split: str = "test",
    keep_ratio: float | None = None,
    device: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    from .pipeline import Analyzer
    from .train_data import utterance_audio

    manifest = Path(root) if root else default_corpus_dir() / "manifest.csv"
    utts = [u for u in load_corpus("manifest", manifest) if u.meta.get("split") == split]
    utts = [u for u in utts if _emotion_indices(u.meta)]
    if not utts:
        raise InputError(f"{manifest} has no {split} utterances with recorded emotion words.")
    if limit:
        utts = utts[:limit]
    analyzer = Analyzer(checkpoint, device=device)
    hits = {"key_sparse": [], "vanilla_top_half": [], "chance": []}
    for utt in utts:
        wanted = set(_emotion_indices(utt.meta))
        sparse = analyzer.analyze(utterance_audio(utt), transcript=utt.transcript, keep_ratio=keep_ratio)
        vanilla = sparse.rerun(keep_ratio=1.0)
        ks_layers = text_key_records(sparse.trace.records)
        if not ks_layers:
            raise InputError(f"{analyzer.model_name} has no key-sparse layers over words.")
        by_name = {r.name: r for r in vanilla.trace.records}
        for rec in ks_layers:
            L = rec.keep.shape[-1]
            idx = {i for i in wanted if i < L}
            kept = most_heads(rec.keep)
            hits["key_sparse"].append(any(kept[i] for i in idx))
            base = most_heads(top_half(by_name[rec.name].key_scores))
            hits["vanilla_top_half"].append(any(base[i] for i in idx))
            hits["chance"].append(chance_of_hit(L, int(kept.sum()), len(idx)))
    return {
        "checkpoint": Path(checkpoint).name,
        "split": split,
        "keep_ratio": keep_ratio if keep_ratio is not None else "model default",
        "utterances": len(utts),
        "layers": len(hits["chance"]) // max(len(utts), 1),
        "key_sparse": float(np.mean(hits["key_sparse"])),
        "vanilla_top_half": float(np.mean(hits["vanilla_top_half"])),
        "chance": float(np.mean(hits["chance"])),
    }


def _emotion_indices(meta: dict[str, Any]) -> list[int]:
    words = meta.get("emotion_words") or []
    if isinstance(words, str):
        try:
            words = json.loads(words)
        except json.JSONDecodeError:
            return []
    return [int(w["index"]) for w in words if isinstance(w, dict) and "index" in w]
