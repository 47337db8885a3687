"""Scoring: class probabilities for cached features, WA / UA / macro-F1 (per corpus for a mix),
and ``evaluate`` (``python -m ser_core evaluate``): a checkpoint on a corpus fold."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from . import metrics
from .checkpoint import load_checkpoint
from .data import load_corpus
from .data.base import Utterance
from .data.mix import VAL_SHARE, corpus_of, split_of
from .errors import InputError
from .features import FeatureExtractor, Features
from .models.base import collate_batch
from .train_data import _folds, extract_all, with_augmented_copies

@torch.no_grad()
def predict(model, feats: list[Features], device, batch_size: int = 32, keep_ratio=None,
            top_p=None, progress=None) -> np.ndarray:
    """Class probabilities [N, C] for a list of features (``progress(done, total)`` if given)."""
    model.eval()
    probs = []
    for i in range(0, len(feats), batch_size):
        batch = collate_batch(model, feats[i : i + batch_size], device)
        probs.append(model(batch, keep_ratio=keep_ratio, top_p=top_p).probs.float().cpu())
        if progress is not None:
            progress(min(i + batch_size, len(feats)), len(feats))
    return torch.cat(probs).numpy() if probs else np.zeros((0, 0))


def score(labels: list[str], y_true: list[str], probs: np.ndarray) -> dict[str, Any]:
    return metrics.summary(y_true, [labels[i] for i in probs.argmax(1)])


def score_parts(labels: list[str], utts: Iterable[Utterance], probs: np.ndarray) -> dict[str, Any]:
    """:func:`score` over all of ``utts``, plus one score per corpus when they come from several
    (``by_corpus``); then ``ua``/``wa`` are the means over the corpora, so that choosing an epoch
    on validation weighs a small real corpus as much as a large synthetic one."""
    utts = list(utts)
    result = score(labels, [u.label for u in utts], probs)
    corpora = sorted({corpus_of(u) for u in utts if "corpus" in u.meta})
    if len(corpora) > 1:
        by = {}
        for corpus in corpora:
            idx = [i for i, u in enumerate(utts) if corpus_of(u) == corpus]
            by[corpus] = {**score(labels, [utts[i].label for i in idx], probs[idx]), "n": len(idx),
                          "predicted_share": _shares(labels, probs[idx])}
        result = {**result, "pooled_ua": result["ua"], "pooled_wa": result["wa"], "by_corpus": by,
                  "ua": float(np.mean([b["ua"] for b in by.values()])),
                  "wa": float(np.mean([b["wa"] for b in by.values()]))}
    result["predicted_share"] = _shares(labels, probs)
    return result


def _shares(labels: list[str], probs: np.ndarray) -> dict[str, float]:
    """The share of the predictions that went to each class (a model stuck on one class shows)."""
    pred = probs.argmax(1)
    return {label: float((pred == i).mean()) if len(pred) else 0.0 for i, label in enumerate(labels)}


#: The seed of the Evaluate page's augmented copies (fixed: a second run scores the same copies,
#: read from the feature cache).
AUGMENTED_COPY_SEED = 424242


def evaluate(checkpoint: str, corpus: str, root: str, protocol: str = "predefined", fold: int = 0,
             split: str = "test", device: str | None = None, progress: bool = True,
             keep_ratio: float | None = None, top_p: float | None = None,
             on_progress=None, augment_seed: int | None = None) -> dict[str, Any]:
    """Score a checkpoint on a corpus fold: WA, UA, macro-F1, per-class table, confusion matrix,
    predictions. ``on_progress(stage, done, total)`` reports feature extraction and scoring.
    ``augment_seed``: score one augmented copy of each clip instead of the clip (the training
    chain of ``ser_core.augment``: another voice, room, microphone and level, each copy seeded
    from this seed and the clip's id): how much a model loses on recordings unlike the corpus's."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = load_checkpoint(checkpoint, device=dev)
    labels = list(meta["config"]["labels"])
    utts = load_corpus(corpus, root)
    seed, val_share, val_fold = 0, VAL_SHARE, None
    if protocol == "speakers":  # the held-out speakers of the mix the checkpoint was trained on:
        # split as mixed_fold does (only the model's labels, its split seed)
        utts = [u for u in utts if u.label in labels]
        held = split_of(meta.get("training", {}))
        seed, val_share, val_fold = held["seed"], held["val_size"], held["val_fold"]
    folds = list(_folds(protocol, utts, seed, val_share, val_fold))
    if not folds:
        raise InputError(f"Protocol {protocol!r} gave no folds for this corpus.")
    if not 0 <= fold < len(folds):
        raise InputError(f"Fold {fold} does not exist: protocol {protocol!r} gives {len(folds)} folds.")
    utts = [u for u in getattr(folds[fold], split) if u.label in labels]
    if not utts:
        raise InputError(f"The {split} part of fold {folds[fold].name!r} has no utterance with a label "
                         f"this model knows ({', '.join(labels)}).")
    if augment_seed is not None:
        utts = with_augmented_copies(utts, 1, int(augment_seed))[len(utts):]
    enc = meta.get("encoders", {})
    extractor = FeatureExtractor(enc.get("speech", "whisper:tiny.en"), enc.get("text", "minilm"), device=dev,
                                 sec_encoder=enc.get("sec"))
    feats = []
    for i, utt in enumerate(utts):
        feats += extract_all([utt], extractor, f"{split} features", False, model)
        if on_progress is not None:
            on_progress("features", i + 1, len(utts))
    probs = predict(model, feats, dev, keep_ratio=keep_ratio, top_p=top_p,
                    progress=None if on_progress is None else (lambda d, t: on_progress("model", d, t)))
    y_true = [u.label for u in utts]
    y_pred = [labels[i] for i in probs.argmax(1)]
    result = score(labels, y_true, probs)
    result["labels"] = labels
    result["fold"] = folds[fold].name
    result["augment_seed"] = augment_seed
    result["confusion_matrix"] = metrics.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    result["per_class"] = metrics.classification_report_table(y_true, y_pred, labels=labels)
    result["predictions"] = [
        {"id": u.id, "true": t, "pred": p, "confidence": float(pr.max()), "audio": str(u.audio),
         "transcript": u.transcript, "video": None if u.video is None else str(u.video),
         "augment": u.meta.get("augment")}
        for u, t, p, pr in zip(utts, y_true, y_pred, probs)
    ]
    return result
