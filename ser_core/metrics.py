"""Classification metrics as speech-emotion papers report them, on scikit-learn.

- WA, "weighted accuracy": overall accuracy, correct / total (each utterance weighs the same,
  so big classes weigh more).
- UA, "unweighted accuracy": the mean of per-class recalls (each class weighs the same), i.e.
  scikit-learn's balanced accuracy over the classes present in ``y_true``.

Labels may be strings ("ang", "hap", ...) or integers. Bad input (empty, unequal lengths)
raises :class:`ser_core.errors.InputError`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm
from sklearn.utils.multiclass import unique_labels

from ser_core.errors import InputError


def _arrays(y_true: Sequence[Any], y_pred: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    true, pred = np.asarray(list(y_true)), np.asarray(list(y_pred))
    if true.ndim != 1 or pred.ndim != 1:
        raise InputError("Labels must be flat sequences (one label per utterance).")
    if len(true) == 0:
        raise InputError("No labels to score: y_true is empty.")
    if len(true) != len(pred):
        raise InputError(f"y_true has {len(true)} labels but y_pred has {len(pred)}; they must match.")
    if true.dtype.kind != pred.dtype.kind and "U" in (true.dtype.kind, pred.dtype.kind):
        raise InputError("y_true and y_pred mix string and numeric labels; use one kind for both.")
    return true, pred


def _labels(true: np.ndarray, pred: np.ndarray, labels: Sequence[Any] | None) -> list[Any]:
    if labels is None:
        return list(unique_labels(true, pred))
    labels = list(labels)
    if not labels:
        raise InputError("labels is empty; give the classes to report, or None for all.")
    if len(set(labels)) != len(labels):
        raise InputError(f"labels repeat: {labels}.")
    return labels


def weighted_accuracy(y_true: Sequence[Any], y_pred: Sequence[Any]) -> float:
    """WA: the fraction of utterances classified correctly."""
    true, pred = _arrays(y_true, y_pred)
    return float(skm.accuracy_score(true, pred))


def unweighted_accuracy(y_true: Sequence[Any], y_pred: Sequence[Any]) -> float:
    """UA: mean over the classes in ``y_true`` of that class's recall (balanced accuracy)."""
    true, pred = _arrays(y_true, y_pred)
    classes = list(unique_labels(true))
    return float(skm.recall_score(true, pred, labels=classes, average="macro", zero_division=0))


def macro_f1(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any] | None = None) -> float:
    """Unweighted mean of per-class F1 over ``labels`` (default: every class seen in either)."""
    true, pred = _arrays(y_true, y_pred)
    return float(
        skm.f1_score(true, pred, labels=_labels(true, pred, labels), average="macro", zero_division=0)
    )


def confusion_matrix(
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    labels: Sequence[Any] | None = None,
    normalize: str | None = None,
) -> np.ndarray:
    """Counts ``[i, j]`` of true class ``labels[i]`` predicted as ``labels[j]``.

    ``normalize="true"`` divides each row by its class's support (rows of absent classes stay 0);
    "pred" and "all" are scikit-learn's other choices.
    """
    if normalize not in (None, "true", "pred", "all"):
        raise InputError(f"normalize must be None, 'true', 'pred' or 'all', not {normalize!r}.")
    true, pred = _arrays(y_true, y_pred)
    classes = _labels(true, pred, labels)
    if not set(classes) & set(true.tolist()):
        raise InputError(f"None of the labels {classes} occurs in y_true.")
    return skm.confusion_matrix(true, pred, labels=classes, normalize=normalize)


def classification_report_table(
    y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any] | None = None
) -> list[dict[str, Any]]:
    """One row per class: label, precision, recall, f1, support (ill-defined ratios are 0)."""
    true, pred = _arrays(y_true, y_pred)
    classes = _labels(true, pred, labels)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        true, pred, labels=classes, zero_division=0
    )
    return [
        {
            "label": label.item() if isinstance(label, np.generic) else label,
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "support": int(s),
        }
        for label, p, r, f, s in zip(classes, precision, recall, f1, support)
    ]


def summary(y_true: Sequence[Any], y_pred: Sequence[Any]) -> dict[str, float | int]:
    """WA, UA, macro-F1 and the number of utterances, as one dict (for reports and the CLI)."""
    return {
        "wa": weighted_accuracy(y_true, y_pred),
        "ua": unweighted_accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred),
        "n": len(list(y_true)),
    }


def ua_margin(ua: float, n: int, z: float = 1.96) -> float:
    """Half the width of a normal-approximation 95 % interval for a UA measured on ``n`` clips
    (balanced classes): how far the score moves from which clips were drawn alone.

    UA is the mean of K per-class recalls p_c, each on about n/K clips, so its variance is
    mean_c p_c(1 − p_c) / n, which is at most ua(1 − ua) / n (Jensen): the margin returned is that
    bound. It says nothing of which *speakers* were drawn, which on corpora with a few test voices
    moves the score more (the cross-validation in ``checkpoints/README.md``)."""
    if n <= 0:
        raise ValueError("No clips: a score on no clips has no margin.")
    ua = min(max(float(ua), 0.0), 1.0)
    return z * float(np.sqrt(ua * (1.0 - ua) / n))
