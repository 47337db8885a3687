"""Choose a recipe's epoch by cross-validation over speakers, then refit on every non-test speaker.

    python -m ser_core train … --val-fold 1/4 --out F1.safetensors     (and 2/4, 3/4, 4/4)
    python -m ser_core cv F1.safetensors F2.safetensors F3.safetensors F4.safetensors
    python -m ser_core train … --val-fold none --keep-epoch E --out FINAL.safetensors

Why: one run's validation part is a few speakers (RAVDESS: 3 actors, 84 clips), and two seeds of
one recipe differ there by less than they differ on test, so it cannot rank runs or pick an epoch
reliably. Cutting a corpus's non-test speakers into N folds and training once per fold lets every
one of them be a validation voice once (``data/mix.py``, :func:`~ser_core.data.mix.speaker_fold`);
the test speakers stay the same in every fold, so test is never looked at. The epoch whose
validation UA, averaged over the folds (each fold's UA being the mean over the corpora it validates
on, or over ``--judge``), is highest is the one kept; the refit trains the same recipe on all the
non-test speakers with the same schedule and keeps that epoch (``--keep-epoch``), the usual way to
use every voice once the choice is made (Hastie, Tibshirani & Friedman, *The Elements of Statistical
Learning*, 2nd ed., sec. 7.10).

The folds' mean validation UA at the chosen epoch is also the estimate, over every non-test speaker,
of how the recipe does on voices it never heard; it is a little optimistic, since the epoch was
chosen on the same folds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from .checkpoint import read_meta
from .data.mix import parse_val_fold
from .errors import InputError
from .train import run_dir_of

__all__ = ["fold_histories", "choose_epoch", "add_cli"]

#: settings that may differ between the folds of one cross-validation (all others must agree)
PER_FOLD = ("val_fold", "out", "run_dir", "resume", "keep_epoch", "sizes", "fold")


def fold_histories(checkpoints: list[str]) -> tuple[int, list[list[dict[str, Any]]]]:
    """(N, each fold's per-epoch rows from its ``metrics.jsonl``, in fold order), after checking
    that the runs are folds 1..N of one recipe, each once, and that every one finished."""
    if len(checkpoints) < 2:
        raise InputError("A cross-validation needs the runs of at least two folds.")
    folds: dict[int, list[dict[str, Any]]] = {}
    recipe: dict[str, Any] | None = None
    n_folds = None
    for path in map(Path, checkpoints):
        training = read_meta(path).get("training", {})
        parsed = parse_val_fold(training.get("val_fold"))
        if not parsed or parsed[1] == 0:
            raise InputError(f"{path.name} was not trained on a validation fold (--val-fold K/N).")
        k, n = parsed
        if n_folds not in (None, n):
            raise InputError(f"{path.name} is fold {k} of {n}, the others of {n_folds}.")
        n_folds = n
        if k in folds:
            raise InputError(f"Fold {k} is given twice.")
        mine = {key: v for key, v in training.items() if key not in PER_FOLD}
        if recipe is not None and mine != recipe:
            differ = sorted(key for key in set(mine) | set(recipe) if mine.get(key) != recipe.get(key))
            raise InputError(f"{path.name} was trained otherwise than the other folds ({', '.join(differ)}).")
        recipe = mine
        rows_file = run_dir_of(path, training.get("run_dir")) / "metrics.jsonl"
        if not rows_file.exists():
            raise InputError(f"{path.name}: its epochs' record {rows_file} is missing.")
        rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
        if len(rows) < int(training.get("hyper", {}).get("epochs", len(rows))):
            raise InputError(f"{path.name} has not finished ({len(rows)} epochs recorded).")
        folds[k] = rows
    if sorted(folds) != list(range(1, n_folds + 1)):
        missing = sorted(set(range(1, n_folds + 1)) - set(folds))
        raise InputError(f"Fold(s) {', '.join(map(str, missing))} of {n_folds} are missing.")
    return n_folds, [folds[k] for k in sorted(folds)]


def _score(row: dict[str, Any], judge: list[str] | None) -> float:
    if not judge:
        return float(row["val_ua"])
    by = row.get("val_ua_by_corpus") or {}
    missing = [c for c in judge if c not in by]
    if missing:
        raise InputError(f"No validation score for {', '.join(missing)} (the corpora validated on: "
                         f"{', '.join(sorted(by)) or 'one corpus'}).")
    return statistics.fmean(by[c] for c in judge)


def choose_epoch(histories: list[list[dict[str, Any]]], judge: list[str] | None = None) -> dict[str, Any]:
    """The epoch with the highest validation UA averaged over the folds (the earliest on a tie), with
    every epoch's mean and spread and the per-corpus means at the chosen one."""
    epochs = min(len(h) for h in histories)
    table = []
    for e in range(epochs):
        scores = [_score(h[e], judge) for h in histories]
        table.append({"epoch": e + 1, "mean": statistics.fmean(scores),
                      "sd": statistics.stdev(scores) if len(scores) > 1 else 0.0, "folds": scores})
    best = max(table, key=lambda r: (r["mean"], -r["epoch"]))
    corpora = sorted({c for h in histories for c in (h[best["epoch"] - 1].get("val_ua_by_corpus") or {})})
    by_corpus = {c: [h[best["epoch"] - 1]["val_ua_by_corpus"][c] for h in histories] for c in corpora}
    return {"epoch": best["epoch"], "mean": best["mean"], "sd": best["sd"], "table": table,
            "by_corpus": {c: {"mean": statistics.fmean(v), "folds": v} for c, v in by_corpus.items()}}


# --- command line ------------------------------------------------------------------------------
def add_cli(subparsers) -> None:
    p = subparsers.add_parser("cv", help="choose a recipe's epoch from its cross-validation folds",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="the runs of folds 1..N (--val-fold K/N)")
    p.add_argument("--judge", help="average validation UA over these corpora only, e.g. demo,ravdess")
    p.add_argument("--json", action="store_true", help="print the whole choice as JSON")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    n, histories = fold_histories(args.checkpoints)
    judge = [c.strip() for c in args.judge.split(",")] if args.judge else None
    choice = choose_epoch(histories, judge)
    if args.json:
        print(json.dumps({"folds": n, **choice}, indent=2))
        return 0
    print(f"{n} folds · validation UA averaged over the folds"
          + (f" (mean over {', '.join(judge)})" if judge else ""))
    for row in choice["table"]:
        mark = "  ← chosen" if row["epoch"] == choice["epoch"] else ""
        folds = " ".join(f"{s:.3f}" for s in row["folds"])
        print(f"  epoch {row['epoch']:>3}  {row['mean']:.3f} ± {row['sd']:.3f}   ({folds}){mark}")
    for corpus, v in choice["by_corpus"].items():
        print(f"  at epoch {choice['epoch']}, {corpus}: {v['mean']:.3f} (folds: "
              + " ".join(f"{s:.3f}" for s in v["folds"]) + ")")
    print(f"Refit on every non-test speaker: the same command with --val-fold none --keep-epoch {choice['epoch']}")
    return 0
