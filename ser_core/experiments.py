"""The papers' experiments as commands: ``python -m ser_core experiment NAME``.

Each experiment trains (or, for sweeps of an inference setting, re-evaluates) one model per row
on the same corpus fold and writes, under ``--out`` (default ``cache_dir()/experiments/NAME``):

    results.csv   one row per setting: the setting, val/test WA, UA, macro-F1, epochs, seconds
    results.png   the paper's view of it (bars per setting, or a curve over the swept value)
    results.json  the same rows plus the command's settings (the app reads this)
    runs/         each row's checkpoint and training log (reused: a finished row is not redone)

Experiments (paper table or figure → what varies):

    ks_ccab        KS-Transformer Table 1: number of CCABs 0…4
    ks_keep_ratio  KS-Transformer Fig. 6: keep_ratio (k) 0.1…0.9, trained at each k
    ilt            ILT Table 1: fusion (concat / plus / trainable plus) × positional encoding
    cat            CAT Table 2: CAT, CtoL only, LtoC only, CNN+LSTM sum
    mesm_modality  MESM Table 5: modalities T, TA, TV, TAV
    mesm_top_p     MESM Fig. 5: test accuracy and FLOPs of one trained MESM over top_p 0.1…1.0
                   (inference only: ``--checkpoint``, default the shipped MESM checkpoint)

On the demo corpus by default; ``--corpus/--root/--protocol`` point at a user's corpus.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .paths import CHECKPOINTS_DIR, REPO_ROOT, cache_dir


@dataclass(frozen=True)
class Row:
    """One setting of an experiment: a name, model, model args and optional inference knobs."""

    name: str
    model: str
    model_args: dict[str, Any] = field(default_factory=dict)
    value: float | None = None  # the swept value, for curves


def _rows(name: str) -> tuple[list[Row], str]:
    """(rows, x-axis title or "" for bars)."""
    if name == "ks_ccab":
        return [Row(f"{n} CCAB", "ks_transformer", {"ccab_layers": n}, n) for n in range(5)], "CCABs"
    if name == "ks_keep_ratio":
        ks = [round(0.1 * i, 1) for i in range(1, 10)]
        return [Row(f"k={k}", "ks_transformer", {"ccab_keep_ratio": k, "fusion_keep_ratio": k}, k)
                for k in ks], "keep_ratio k"
    if name == "ilt":
        return [Row(f"{fusion}, PE {'on' if pe else 'off'}", "ilt",
                    {"fusion": fusion, "positional_encoding": pe})
                for fusion in ("concat", "plus", "trainable_plus") for pe in (False, True)], ""
    if name == "cat":
        names = {"full": "CAT", "ctol": "CtoL only", "ltoc": "LtoC only", "sum": "CNN+LSTM"}
        return [Row(label, "cat", {"variant": v}) for v, label in names.items()], ""
    if name == "mesm_modality":
        return [Row(m, "mesm", {"modalities": m}) for m in ("T", "TA", "TV", "TAV")], ""
    if name == "mesm_top_p":
        return [Row(f"top_p={p}", "mesm", {}, p) for p in [round(0.1 * i, 1) for i in range(1, 11)]], "top_p"
    raise InputError(f"Unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}.")


EXPERIMENTS = ("ks_ccab", "ks_keep_ratio", "ilt", "cat", "mesm_modality", "mesm_top_p")
#: What each experiment compares, in words (the Models page's picker).
EXPERIMENT_TITLES = {
    "ks_ccab": "KS-Transformer: how many cross-modal blocks (CCABs)",
    "ks_keep_ratio": "KS-Transformer: the share of keys kept (k), trained at each k",
    "ilt": "ILT: how the two branches are fused, with and without positions",
    "cat": "CAT: both cross-attention directions, one of them, or none",
    "mesm_modality": "MESM: text alone, or with speech, faces or both",
    "mesm_top_p": "MESM: accuracy and cost over the nucleus size (top_p)",
}


#: Results run by the project and shipped with it (small: results.json/csv/png, no checkpoints):
#: what the app shows on a fresh machine until the experiment is run there.
SHIPPED_RESULTS = REPO_ROOT / "results" / "experiments"


def results_dir(name: str) -> Path:
    """Where ``python -m ser_core experiment NAME`` writes (the cache)."""
    return cache_dir() / "experiments" / name


def found_results_dir(name: str) -> Path | None:
    """The folder whose results the app shows: this machine's run, else the shipped one, else None."""
    for folder in (results_dir(name), SHIPPED_RESULTS / name):
        if (folder / "results.json").is_file():
            return folder
    return None


def run_experiment(name: str, corpus: str = "manifest", root: str = "", protocol: str = "predefined",
                   fold: int = 0, epochs: int | None = None, max_utterances: int | None = None,
                   preset: str = "fast", out: str | Path | None = None, checkpoint: str | None = None,
                   model_args: dict[str, Any] | None = None, device: str | None = None,
                   values: list[float] | None = None, log=print) -> list[dict[str, Any]]:
    """Run every row (skipping rows already finished in ``out``), write CSV/PNG/JSON, return rows.

    ``values`` keeps only the rows of a sweep at those values (e.g. k 0.1, 0.3 … 0.9 of nine).
    """
    from .train import TrainConfig, run_dir_of, train

    rows, x_title = _rows(name)
    if values:
        rows = [r for r in rows if r.value is not None and any(abs(r.value - v) < 1e-9 for v in values)]
        if not rows:
            raise InputError(f"None of the values {values} is a setting of {name}.")
    out = Path(out) if out else results_dir(name)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    if name == "mesm_top_p":
        results = _top_p_sweep(rows, checkpoint or str(CHECKPOINTS_DIR / "mesm_demo.safetensors"),
                               corpus, root, protocol, fold, device, log)
    else:
        for row in rows:
            path = out / "runs" / (_slug(row.name) + ".safetensors")
            done = out / "runs" / (_slug(row.name) + ".result.json")
            if done.exists():
                results.append(json.loads(done.read_text()))
                log(f"{row.name}: done before, reused")
                continue
            cfg = TrainConfig(model=row.model, corpus=corpus, root=root, protocol=protocol, fold=fold,
                              preset=preset, epochs=epochs, out=str(path), max_utterances=max_utterances,
                              model_args={**(model_args or {}), **row.model_args}, device=device,
                              group_by_length=True,  # less padding: faster epochs, the same items
                              resume=run_dir_of(path).exists())
            t0 = time.perf_counter()
            meta = train(cfg, progress=False, log=lambda *_: None)
            m = meta["metrics"]
            result = {"setting": row.name, "value": row.value, "model": row.model,
                      "test_wa": m["test"]["wa"], "test_ua": m["test"]["ua"],
                      "test_macro_f1": m["test"]["macro_f1"], "val_ua": m["val"]["ua"],
                      "best_epoch": m["epoch"], "epochs": len(m.get("epoch_seconds", [])),
                      "seconds_per_epoch": _mean(m.get("epoch_seconds", [])),
                      "train_seconds": round(time.perf_counter() - t0, 1), "n_test": m["test"]["n"]}
            done.write_text(json.dumps(result))
            results.append(result)
            log(json.dumps(result))
    _write(out, name, results, x_title, {"corpus": corpus, "root": root, "protocol": protocol, "fold": fold,
                                         "epochs": epochs, "max_utterances": max_utterances,
                                         "preset": preset, "model_args": model_args or {}})
    return results


def _top_p_sweep(rows, checkpoint, corpus, root, protocol, fold, device, log) -> list[dict[str, Any]]:
    """Paper Fig. 5: one trained model's test accuracy and FLOPs as top_p goes 0.1 → 1.0."""
    import numpy as np
    import torch

    from . import metrics
    from .checkpoint import load_checkpoint
    from .data import load_corpus
    from .features import FeatureExtractor
    from .model_card import count_flops
    from .scoring import predict
    from .train_data import _folds, extract_all

    if not Path(checkpoint).exists():
        raise InputError(f"No MESM checkpoint at {checkpoint}: train one or pass --checkpoint.")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = load_checkpoint(checkpoint, device=dev)
    labels = list(meta["config"]["labels"])
    utts = [u for u in list(_folds(protocol, load_corpus(corpus, root), 0))[fold].test if u.label in labels]
    extractor = FeatureExtractor(device=dev)
    feats = extract_all(utts, extractor, "test features", False, model)
    y_true = [u.label for u in utts]
    with_faces = [f for f in feats if len(f.extra.get("faces", ())) > 0]
    n_faces = len(with_faces)  # a corpus made without --video: audio and text only (said in every row)
    with_faces = with_faces or feats
    results = []
    for row in rows:
        probs = predict(model, feats, dev, top_p=row.value)
        y_pred = [labels[i] for i in probs.argmax(1)]
        flops = float(np.mean([count_flops(model, f, top_p=row.value) for f in with_faces[:20]]))
        results.append({"setting": row.name, "value": row.value, "model": meta["model"],
                        **{f"test_{k}": v for k, v in metrics.summary(y_true, y_pred).items() if k != "n"},
                        "gflops_per_utterance": flops / 1e9, "n_test": len(y_true),
                        "test_clips_with_faces": n_faces})
        log(json.dumps(results[-1]))
    return results


def _write(out: Path, name: str, results: list[dict[str, Any]], x_title: str, settings: dict[str, Any]) -> None:
    if not results:
        return
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    (out / "results.json").write_text(json.dumps({"experiment": name, "settings": settings,
                                                  "x_title": x_title, "rows": results}, indent=1))
    plot_results(results, x_title, name).savefig(out / "results.png", dpi=110, bbox_inches="tight")


def plot_results(results: list[dict[str, Any]], x_title: str, name: str):
    """Test UA and WA per setting (bars), or over the swept value (curves; FLOPs on a 2nd axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    if x_title:
        xs = [r["value"] for r in results]
        ax.plot(xs, [r["test_ua"] for r in results], "o-", label="test UA")
        ax.plot(xs, [r["test_wa"] for r in results], "s--", label="test WA")
        ax.set_xlabel(x_title)
        # at least 0.2 of accuracy on the axis: a spread of a point or two (one test set's noise)
        # must not look like a trend
        scores = [r[k] for r in results for k in ("test_ua", "test_wa")]
        mid = (min(scores) + max(scores)) / 2
        half = max(0.1, (max(scores) - min(scores)) / 2 + 0.02)
        ax.set_ylim(max(0.0, mid - half), min(1.0, mid + half))
        if "gflops_per_utterance" in results[0]:
            ax2 = ax.twinx()
            ax2.plot(xs, [r["gflops_per_utterance"] for r in results], "^:", color="grey", label="GFLOPs")
            ax2.set_ylabel("GFLOPs per utterance")
            ax2.legend(loc="lower right")
    else:
        xs = range(len(results))
        ax.bar([x - 0.2 for x in xs], [r["test_ua"] for r in results], width=0.4, label="test UA")
        ax.bar([x + 0.2 for x in xs], [r["test_wa"] for r in results], width=0.4, label="test WA")
        ax.set_xticks(list(xs), [r["setting"] for r in results], rotation=20, ha="right")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{name} (demo corpus unless stated)")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    return fig


def load_results(name: str, out: str | Path | None = None) -> dict[str, Any] | None:
    """An experiment's results.json: from ``out``, else this machine's run, else the shipped one."""
    folder = Path(out) if out else found_results_dir(name)
    path = folder / "results.json" if folder is not None else None
    return json.loads(path.read_text()) if path is not None and path.exists() else None


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("experiment", help="run one of the papers' experiments (table + plot)",
                              description=__doc__.split("\n\n")[0] + " " + ", ".join(EXPERIMENTS) + ".",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=EXPERIMENTS)
    p.add_argument("--corpus", default="manifest")
    p.add_argument("--root", default=None, help="corpus folder or manifest CSV (default: the demo corpus)")
    p.add_argument("--protocol", default="predefined")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--epochs", type=int, help="epochs per row (default: the preset's)")
    p.add_argument("--max-utterances", type=int, help="a random subset of the corpus (quick runs)")
    p.add_argument("--preset", default="fast")
    p.add_argument("--out", help="results folder (default: cache dir/experiments/NAME)")
    p.add_argument("--checkpoint", help="mesm_top_p: the MESM checkpoint to sweep")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model config for every row, e.g. d_model=64")
    p.add_argument("--values", help="a sweep's settings to run, comma-separated (default: all), e.g. 0.1,0.5,0.9")
    p.add_argument("--device")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from .train_cli import _default_root, _parse_model_args

    rows = run_experiment(args.name, args.corpus, _default_root(args), args.protocol, args.fold, args.epochs,
                          args.max_utterances, args.preset, args.out, args.checkpoint,
                          _parse_model_args(args.model_arg), args.device,
                          [float(v) for v in args.values.split(",")] if args.values else None)
    out = Path(args.out) if args.out else results_dir(args.name)
    print(f"{len(rows)} rows → {out / 'results.csv'} and {out / 'results.png'}")
    return 0
