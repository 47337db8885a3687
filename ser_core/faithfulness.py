"""Does key-sparse attention keep the words that carry the emotion?

The demo corpus records, for every utterance, which words carry emotion (``emotion_words`` with
their word index) and which emotion they say (``text_emotion``). For each test utterance whose
emotion word agrees with its label (not the conflicting ones, where the voice says another
emotion than the words, as issue 11 defines the measure) we ask every text-side
key-sparse layer (a record whose keys are words and which has a keep mask) whether one of those
words is among its kept keys (kept by at least half of the heads). Three shares are reported:

* ``key_sparse``: the model at its keep_ratio, the keep masks it actually used;
* ``vanilla_top_half``: the same model with keep_ratio = 1 (vanilla attention), keeping, per
  layer and head, the top half of keys by the same column-sum score;
* ``chance``: the expected share for a random set of the same size as the key-sparse one.

Per corpus (:func:`faithfulness_by_corpus`, ``python -m ser_core faithfulness --corpus NAME ...``):
the deletion test (``ser_core.deletion``) on up to ``--limit`` clips of each corpus's held-out
speakers, averaged: per axis (words, speech frames or MESM's chunks) the AOPC of every ranking
(the mean fall of the predicted emotion's probability as its top 10–50 % are removed), and the
fall when the top 20 % are removed by attention and at random, with their ratio. The demo
corpus's entry also carries the keyword-kept shares above (``keyword_kept``).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
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
    utts = [u for u in utts if _agreeing_emotion_indices(u)]
    if not utts:
        raise InputError(f"{manifest} has no {split} utterances with recorded emotion words.")
    if limit:
        utts = utts[:limit]
    analyzer = Analyzer(checkpoint, device=device)
    hits = new_hits()
    for utt in utts:
        sparse = analyzer.analyze(utterance_audio(utt), transcript=utt.transcript, keep_ratio=keep_ratio)
        if not add_keyword_hits(hits, sparse, _agreeing_emotion_indices(utt)):
            raise InputError(f"{analyzer.model_name} has no key-sparse layers over words.")
    return keyword_report(hits, checkpoint, split, keep_ratio, len(utts))


def new_hits() -> dict[str, list]:
    return {"key_sparse": [], "vanilla_top_half": [], "chance": [], "by_layer": {}}


def add_keyword_hits(hits: dict[str, list], sparse, wanted: list[int]) -> bool:
    """Add one analysed utterance's (layer) cases to ``hits``; False when the model has no
    key-sparse layer over words (nothing added)."""
    ks_layers = text_key_records(sparse.trace.records)
    if not ks_layers:
        return False
    vanilla = sparse.rerun(keep_ratio=1.0)
    by_name = {r.name: r for r in vanilla.trace.records}
    for rec in ks_layers:
        L = rec.keep.shape[-1]
        idx = {i for i in wanted if i < L}
        kept = most_heads(rec.keep)
        hit = any(kept[i] for i in idx)
        hits["key_sparse"].append(hit)
        hits["by_layer"].setdefault(rec.name, []).append(hit)
        base = most_heads(top_half(by_name[rec.name].key_scores))
        hits["vanilla_top_half"].append(any(base[i] for i in idx))
        hits["chance"].append(chance_of_hit(L, int(kept.sum()), len(idx)))
    return True


def keyword_report(hits: dict[str, list], checkpoint: str | Path, split: str, keep_ratio: float | None,
                   utterances: int) -> dict[str, Any]:
    """The keyword-kept report (the keys ``ui.faithfulness_note`` reads)."""
    return {
        "checkpoint": Path(checkpoint).name,
        "split": split,
        "keep_ratio": keep_ratio if keep_ratio is not None else "model default",
        "utterances": utterances,
        "layers": len(hits["chance"]) // max(utterances, 1),
        "key_sparse": float(np.mean(hits["key_sparse"])),
        "vanilla_top_half": float(np.mean(hits["vanilla_top_half"])),
        "chance": float(np.mean(hits["chance"])),
        # each layer's own rate (the chance level is about the same for every layer)
        "key_sparse_by_layer": {name: float(np.mean(v)) for name, v in hits["by_layer"].items()},
    }


def _agreeing_emotion_indices(utt) -> list[int]:
    """The emotion words' indices of an utterance whose words say its labelled emotion ([] when
    they say another one, or nothing); a manifest without ``text_emotion`` counts every word."""
    said = utt.meta.get("text_emotion")
    if said not in (None, "", utt.label):
        return []
    return _emotion_indices(utt.meta)


def _emotion_indices(meta: dict[str, Any]) -> list[int]:
    words = meta.get("emotion_words") or []
    if isinstance(words, str):
        try:
            words = json.loads(words)
        except json.JSONDecodeError:
            return []
    return [int(w["index"]) for w in words if isinstance(w, dict) and "index" in w]


# --------------------------------------------------------------------------- per corpus

SHARE_20 = 0.2  # the step reported beside AOPC: the top 20 % removed
SELECTION = ("up to --limit clips, the same number of each emotion as far as a corpus has them "
             "(each emotion's clips shuffled with --seed, then taken in turn)")


def held_out_utterances(name: str, root: str | Path, labels: list[str], meta: dict[str, Any],
                        split: str = "test") -> list:
    """The clips of one corpus the checkpoint never heard, as ``evaluate --protocol speakers``
    scores them: only the model's emotions, then the corpus's speaker split (``data.mix``) with the
    checkpoint's split seed; the demo corpus keeps its own split. A corpus the run only tested on (a
    ``test:NAME`` corpus of its mix) is used whole."""
    from .data.mix import CorpusSpec, load_spec, speaker_split, split_of

    training = meta.get("training", {})
    utts = [u for u in load_spec(CorpusSpec(name, str(root))) if u.label in labels]
    if not utts:
        raise InputError(f"{name}: no clip has one of the model's emotions ({', '.join(labels)}).")
    if any(m.get("name") == name and m.get("test_only") for m in training.get("mix") or []):
        return utts
    return list(getattr(speaker_split(utts, **split_of(training)), split))


def stratified_order(utts: list, seed: int = 0) -> list:
    """Every clip, ordered so that any first N hold the emotions in equal numbers as far as they
    go: each emotion's clips shuffled with ``seed``, then one of each emotion in turn."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list] = {}
    for u in sorted(utts, key=lambda u: u.id):
        by_label.setdefault(u.label, []).append(u)
    queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_label.items())]
    order = []
    for i in range(max((len(q) for q in queues), default=0)):
        order += [q[i] for q in queues if i < len(q)]
    return order


def drop_at(curve, length: int, share: float = SHARE_20) -> float | None:
    """p(original) − p(after removing the top ``share`` of the axis), at that step of the curve
    (⌊share × length⌋ positions, at least one, as the deletion test counts them)."""
    count = min(max(int(np.floor(share * length + 1e-9)), 1), length - 1)
    hit = np.flatnonzero(np.asarray(curve.counts) == count)
    return float(curve.p_orig - curve.probs[hit[0]]) if len(hit) else None


def corpus_deletion(analyzer, utts: list, limit: int | None, seed: int = 0, keep_ratio: float | None = None,
                    keywords: bool = False, split: str = "test", log=None) -> dict[str, Any]:
    """The deletion test on up to ``limit`` clips of ``utts`` (:func:`stratified_order`), averaged
    per axis: AOPC of every ranking, the drop when the top 20 % are removed (attention, random and
    the others) and attention ÷ random. Clips the analysis refuses (too little speech) are skipped
    and the next one taken. ``keywords``: also the keyword-kept shares (the demo corpus)."""
    from .train_data import utterance_audio

    t0 = time.perf_counter()
    order = stratified_order(utts, seed)
    want = min(limit or len(order), len(order))
    aopc: dict[str, dict[str, list[float]]] = {}
    drops: dict[str, dict[str, list[float]]] = {}
    counts: dict[str, int] = {}
    p_orig, used, skipped = [], [], []
    hits, n_keyword, no_keyword_layers = new_hits(), 0, False
    for utt in order:
        if len(used) == want:
            break
        try:
            analysis = analyzer.analyze(utterance_audio(utt), transcript=utt.transcript, keep_ratio=keep_ratio)
            result = analysis.deletion_test()
        except InputError as exc:
            skipped.append(f"{utt.id}: {exc}")
            continue
        used.append(utt)
        p_orig.append(result.p_orig)
        for axis, labels in result.axes.items():
            kind = labels.kind
            counts[kind] = counts.get(kind, 0) + 1
            for curve in (c for c in result.curves if c.axis == axis):
                aopc.setdefault(kind, {}).setdefault(curve.ranking, []).append(curve.aopc)
                drop = drop_at(curve, len(labels))
                if drop is not None:
                    drops.setdefault(kind, {}).setdefault(curve.ranking, []).append(drop)
        wanted = _agreeing_emotion_indices(utt)
        if keywords and wanted and not no_keyword_layers:
            no_keyword_layers = not add_keyword_hits(hits, analysis, wanted)
            n_keyword += not no_keyword_layers
        if log is not None:
            log(f"{len(used)}/{want} clips ({time.perf_counter() - t0:.0f} s)")
    axes = {}
    for kind, by_ranking in aopc.items():
        mean_drop = {r: float(np.mean(v)) for r, v in drops.get(kind, {}).items()}
        att, rand = mean_drop.get("attention"), mean_drop.get("random")
        axes[kind] = {
            "utterances": counts[kind],
            "aopc": {r: float(np.mean(v)) for r, v in by_ranking.items()},
            "drop_top20": mean_drop,
            # only when random removal lowers the probability by a point or more (else the ratio
            # of two tiny numbers means nothing)
            "attention_over_random": att / rand if att is not None and rand is not None and rand >= 0.01 else None,
        }
    report: dict[str, Any] = {
        "utterances": len(used),
        "emotions": {label: sum(u.label == label for u in used) for label in sorted({u.label for u in used})},
        "held_out_clips": len(utts),
        "skipped": skipped,
        "mean_p_predicted": float(np.mean(p_orig)) if p_orig else None,
        "axes": axes,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if keywords:
        report["keyword_kept"] = None if no_keyword_layers or not n_keyword else keyword_report(
            hits, analyzer.checkpoint, split, keep_ratio, n_keyword)
    return report


def faithfulness_by_corpus(checkpoint: str | Path, corpora: list[tuple[str, str | None]], limit: int | None = 40,
                           seed: int = 0, split: str = "test", keep_ratio: float | None = None,
                           device: str | None = None, command: str | None = None, log=None) -> dict[str, Any]:
    """The deletion test per corpus on its held-out speakers (:func:`held_out_utterances`).
    ``corpora``: (name, folder) pairs; the demo corpus's folder may be None (the generated one), and
    its report (or a manifest corpus's) also has the keyword-kept shares (``keyword_kept``, the keys
    of :func:`faithfulness_report`; None when no clip records its emotion words). The result is
    what ``--write`` stores as ``faithfulness_by_corpus`` in the checkpoint's meta."""
    from .data.mix import demo_manifest
    from .pipeline import Analyzer

    analyzer = Analyzer(checkpoint, device=device)
    report: dict[str, Any] = {
        "checkpoint": Path(checkpoint).name,
        "model": analyzer.model_name,
        "date": datetime.now().isoformat(timespec="seconds"),
        "settings": {"limit": limit, "seed": seed, "split": split,
                     "keep_ratio": keep_ratio if keep_ratio is not None else "model default",
                     "selection": SELECTION, "command": command},
        "corpora": {},
    }
    for name, root in corpora:
        name = name.strip().lower()
        if not root and name not in ("demo",):
            raise InputError(f"The corpus {name} needs its folder: put --root FOLDER after --corpus {name}.")
        root = str(root or demo_manifest())
        utts = held_out_utterances(name, root, analyzer.labels, analyzer.meta, split)
        if not utts:
            raise InputError(f"{name}: no held-out clip to test.")
        say = None if log is None else (lambda text, name=name: log(f"{name}: {text}"))
        result = corpus_deletion(analyzer, utts, limit, seed, keep_ratio, keywords=name in ("demo", "manifest"),
                                 split=split, log=say)
        report["corpora"][name] = {"root": root, **result}
    return report
