"""Greedy model soup: average the weights of runs fine-tuned from one starting model.

    python -m ser_core soup RUN.safetensors RUN2.safetensors ... --out SOUP.safetensors [--judge demo,ravdess,tess]

Wortsman et al. (2022), "Model soups: averaging weights of multiple fine-tuned models improves
accuracy without increasing inference time" (ICML), Recipe 1 ("greedy soup"): sort the runs by
validation accuracy; start from the best; add each next run to the average only if the averaged
model's validation accuracy does not fall. The soup is one model of the same size, so every
attention view explains it as it would any checkpoint; the paper finds the gain largest out of
distribution, which is where this project's models are weakest (voices never heard).

Here "validation accuracy" is the trainer's own: unweighted accuracy on the mix's validation part,
averaged over its corpora (``--judge`` narrows that mean to some corpora). Test is scored once, on
the final soup, and only stored in its meta (``metrics.test``), not printed. The runs must share a
model, its size, encoders, labels and held-out speakers (never a run split another way: its
validation voices would be another run's training voices);
they should start from one checkpoint (the paper's condition for averaging to work), and the file
says where each did. Batch-norm statistics, where a model has them, are averaged as well.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import InputError

__all__ = ["average_weights", "check_ingredients", "greedy_soup", "add_cli"]


def check_ingredients(metas: list[dict[str, Any]], names: list[str]) -> None:
    """Refuse (InputError) runs that cannot be averaged into one model judged on one validation part."""
    if len(metas) < 2:
        raise InputError("A soup needs two or more checkpoints.")
    from .train import TrainConfig
    from .train_data import split_clash

    first = metas[0]
    for meta, name in zip(metas[1:], names[1:]):
        if meta.get("model") != first.get("model"):
            raise InputError(f"{name} holds another model ({meta.get('model')}) than {names[0]} "
                             f"({first.get('model')}): only runs of one model can be averaged.")
        if _encoders(meta) != _encoders(first):
            raise InputError(f"{name} reads its input with other encoders than {names[0]}: its weights "
                             "mean other things.")
        if meta["config"].get("labels") != first["config"].get("labels"):
            raise InputError(f"{name} answers with other emotions than {names[0]}.")
        if not _corpora(meta) and not _corpora(first):
            continue
        if _corpora(meta) != _corpora(first):
            raise InputError(f"{name} was trained on other corpora than {names[0]}: their validation parts differ.")
        if split_clash(TrainConfig.from_meta(meta["training"]), first["training"]):
            raise InputError(f"{name} and {names[0]} held out other speakers; averaging them would judge the "
                             f"soup on voices one of them trained on.")


def _encoders(meta: dict[str, Any]) -> tuple:
    """The encoders by name (their ``identity`` also hashes the feature code's version)."""
    enc = meta.get("encoders") or {}
    return tuple(enc.get(k) for k in ("speech", "text", "sec"))


def _corpora(meta: dict[str, Any]) -> list[str]:
    return [m["name"] for m in (meta.get("training") or {}).get("mix") or []]


def average_weights(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of state dicts with the same keys and shapes (in float32, cast back to
    the first one's dtype; integer buffers such as batch counts are taken from the first)."""
    keys = list(states[0])
    for state in states[1:]:
        if list(state) != keys or any(state[k].shape != states[0][k].shape for k in keys):
            raise InputError("The checkpoints' weights have other names or shapes: they are not one model.")
    out = {}
    for k in keys:
        first = states[0][k]
        if first.is_floating_point():
            out[k] = torch.stack([s[k].float() for s in states]).mean(0).to(first.dtype)
        else:
            out[k] = first.clone()
    return out


class _Judge:
    """Validation (and, once, test) scores of a model on the runs' mix, features computed once."""

    def __init__(self, meta: dict[str, Any], model, judge: list[str] | None, device: torch.device,
                 progress: bool) -> None:
        from .features import FeatureExtractor
        from .train import TrainConfig
        from .train_data import extract_all, load_fold

        self.fold = load_fold(TrainConfig.from_meta(meta["training"]))
        self.labels = list(meta["config"]["labels"])
        self.judge = judge
        self.device = device
        enc = meta.get("encoders") or {}
        extractor = FeatureExtractor(enc.get("speech", "whisper:tiny.en"), enc.get("text", "minilm"), device=device,
                                     sec_encoder=enc.get("sec"))
        self.val = extract_all(self.fold.val, extractor, "val features", progress, model)
        self.test_f = extract_all(self.fold.test, extractor, "test features", progress, model)

    def scores(self, model, part: str = "val") -> dict[str, Any]:
        from .scoring import predict, score_parts

        utts, feats = (self.fold.val, self.val) if part == "val" else (self.fold.test, self.test_f)
        return score_parts(self.labels, utts, predict(model, feats, self.device))

    def value(self, scores: dict[str, Any]) -> float:
        by = scores.get("by_corpus")
        if not self.judge or not by:
            return float(scores["ua"])
        missing = [c for c in self.judge if c not in by]
        if missing:
            raise InputError(f"--judge names {', '.join(missing)}, which the runs' validation part does not hold "
                             f"(it holds {', '.join(sorted(by))}).")
        return float(np.mean([by[c]["ua"] for c in self.judge]))


def greedy_soup(paths: list[str], out: str, judge: list[str] | None = None, half: bool = False,
                device: str | None = None, progress: bool = True,
                log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Greedy soup of ``paths`` (module docstring), written to ``out``; returns its meta."""
    dev = torch.device(device or "cpu")
    loaded = [load_checkpoint(p, device=dev) for p in paths]
    names = [Path(p).name for p in paths]
    check_ingredients([m for _, m in loaded], names)
    judge_ = _Judge(loaded[0][1], loaded[0][0], judge, dev, progress)
    model = loaded[0][0]
    own = []
    for (m, meta), name in zip(loaded, names):
        s = judge_.scores(m)
        own.append({"checkpoint": name, "val": judge_.value(s), "val_by_corpus": _by(s),
                    "init_from": (meta.get("training") or {}).get("init_from")})
        log(f"{name}: validation {own[-1]['val']:.4f} {own[-1]['val_by_corpus']}")
    order = sorted(range(len(paths)), key=lambda i: -own[i]["val"])
    states = [{k: v.detach().clone() for k, v in loaded[i][0].state_dict().items()} for i in range(len(paths))]
    kept = [order[0]]
    best = own[order[0]]["val"]
    steps = [{"added": names[order[0]], "val": best, "kept": True}]
    for i in order[1:]:
        model.load_state_dict(average_weights([states[j] for j in kept + [i]]))
        value = judge_.value(s := judge_.scores(model))
        keep = value >= best
        steps.append({"added": names[i], "val": value, "val_by_corpus": _by(s), "kept": keep})
        log(f"+ {names[i]}: validation {value:.4f} {'kept' if keep else 'left out'}")
        if keep:
            kept.append(i)
            best = value
    model.load_state_dict(average_weights([states[j] for j in kept]))
    val, test = judge_.scores(model), judge_.scores(model, "test")
    first = loaded[order[0]][1]
    meta = {**{k: v for k, v in first.items() if k not in ("metrics", "faithfulness_by_corpus",
                                                          "expressive_regions", "chosen_on_validation")},
            "soup": {"method": "greedy soup (Wortsman et al. 2022, Recipe 1)",
                     "judged_on": "validation UA, mean over " + (", ".join(judge) if judge else "the mix's corpora"),
                     "ingredients": own, "steps": steps, "kept": [names[j] for j in kept]},
            "metrics": {"val": val, "test": test}}
    path = save_checkpoint(out, model, meta, half=half)
    # validation only: the test scores are in the file's meta, read when a rule fixed beforehand has
    # decided on the validation figures (printing them here put them in front of that decision)
    log(json.dumps({"kept": meta["soup"]["kept"], "val": judge_.value(val), "val_by_corpus": _by(val),
                    "checkpoint": str(path)}))
    return meta


def _by(scores: dict[str, Any]) -> dict[str, float]:
    return {c: round(float(v["ua"]), 4) for c, v in (scores.get("by_corpus") or {}).items()}


def add_cli(sub) -> None:
    p = sub.add_parser("soup", help="average the weights of runs fine-tuned from one checkpoint (greedy soup)",
                       description=__doc__.split("\n\n")[2])
    p.add_argument("checkpoints", nargs="+", help="the runs (two or more, one model, one mix)")
    p.add_argument("--out", required=True)
    p.add_argument("--judge", help="comma-separated corpora whose mean validation UA decides (default: all of the mix)")
    p.add_argument("--half", action="store_true", help="store the weights as float16")
    p.add_argument("--device")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    greedy_soup(args.checkpoints, args.out, args.judge.split(",") if args.judge else None, args.half, args.device,
                progress=sys.stderr.isatty(), log=lambda m: print(m, file=sys.stderr))
    return 0
