"""The baseline to beat: a linear probe on frozen speech-encoder states (``python -m ser_core probe``).

For every utterance, each Whisper level's states are pooled over time (mean and standard
deviation, as in SUPERB-style probing) and a logistic regression is trained on them. The level
and the regularisation strength C are chosen on the validation part (mean per-corpus UA, as the
trainer chooses epochs); the test part is scored once. The data, split, label set and balancing
are exactly those of ``train`` with the same ``--corpus/--root`` arguments, and the features are
read from the same cache, so the probe and the models are compared on the same footing.

    python -m ser_core probe --corpus ravdess --root A --corpus tess --root B --corpus demo
    python -m ser_core probe --corpus ravdess --root A --corpus demo --corpus test:tess --root B
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from .data.mix import DEFAULT_CLASSES, VAL_SHARE, CorpusSpec, balance_weights, mixed_fold

C_GRID = (0.01, 0.1, 1.0)


def pooled_levels(speech: np.ndarray) -> np.ndarray:
    """[levels, 2·D]: mean and standard deviation over time of each level's states [L, T, D]."""
    x = np.asarray(speech, dtype=np.float32)
    return np.concatenate([x.mean(1), x.std(1)], axis=-1)


def run_probe(specs: list[CorpusSpec], classes=DEFAULT_CLASSES, seed: int = 0,
              speech_encoder: str = "whisper:tiny.en", progress: bool = True, augment_copies: int = 0,
              augment_seed: int = 0, augment_corpora: list[str] | None = None,
              val_size: float = VAL_SHARE, val_fold: str | None = None) -> dict[str, Any]:
    """Fit the probe on the mix's training part (plus augmented copies, as the trainer makes them,
    when asked); returns the chosen level/C and val/test scores."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .features import FeatureExtractor
    from .scoring import score_parts
    from .train_data import extract_all, with_augmented_copies

    fold = mixed_fold(specs, tuple(classes), seed, val_size, val_fold)
    labels = sorted({u.label for u in fold.train})
    extractor = FeatureExtractor(speech_encoder, "minilm")
    parts = {}
    for name in ("train", "val", "test"):
        utts = list(getattr(fold, name))
        if name == "train":
            utts = with_augmented_copies(utts, augment_copies, augment_seed, augment_corpora)
        feats = extract_all(utts, extractor, f"{name} features", progress)
        parts[name] = (utts, np.stack([pooled_levels(f.speech) for f in feats]) if feats else None)
    y_train = np.array([labels.index(u.label) for u in parts["train"][0]])
    weights = balance_weights(parts["train"][0]) * len(y_train)

    def fit(level: int, c: float):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        clf.fit(parts["train"][1][:, level], y_train, logisticregression__sample_weight=weights)
        return clf

    def scored(clf, level: int, part: str) -> dict[str, Any]:
        utts, x = parts[part]
        probs = np.zeros((len(utts), len(labels)))
        probs[:, clf.classes_] = clf.predict_proba(x[:, level])
        return score_parts(labels, utts, probs)

    search = []
    for level in range(parts["train"][1].shape[1]):
        for c in C_GRID:
            search.append({"level": level, "C": c, "val_ua": scored(fit(level, c), level, "val")["ua"]})
    best = max(search, key=lambda r: r["val_ua"])
    clf = fit(best["level"], best["C"])
    return {"labels": labels, "fold": fold.name, "level": best["level"], "C": best["C"],
            "search": search, "val": scored(clf, best["level"], "val"),
            "test": scored(clf, best["level"], "test"),
            "sizes": {k: len(v[0]) for k, v in parts.items()}}


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("probe", help="linear probe on frozen Whisper states (the baseline to beat)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", action="append", default=[], help="as for train (repeatable; test:NAME)")
    p.add_argument("--root", action="append", default=[], help="as for train, in the order of --corpus")
    p.add_argument("--classes", help="comma-separated labels (default ang,hap,neu,sad)")
    p.add_argument("--seed", type=int, default=0, help="the speaker split's seed (as a model's --split-seed)")
    p.add_argument("--augment", type=int, default=0, metavar="N", help="as for train: N augmented copies")
    p.add_argument("--augment-corpora", help="as for train (default: all)")
    p.add_argument("--out", help="write the result as JSON here")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from .data.mix import corpus_specs

    specs = corpus_specs(args.corpus or ["demo"], args.root)
    result = run_probe(specs, tuple(args.classes.split(",")) if args.classes else DEFAULT_CLASSES, args.seed,
                       augment_copies=args.augment,
                       augment_corpora=args.augment_corpora.split(",") if args.augment_corpora else None)
    text = json.dumps({k: v for k, v in result.items() if k != "search"}, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(result, indent=2))
    return 0
