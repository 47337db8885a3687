"""The real-voice report shipped beside the checkpoints (``checkpoints/real_voices.json``).

    python -m ser_core real-voices --model checkpoints/ks_transformer_demo.safetensors \\
        --cross /runs/ks_no_tess.safetensors --cross /runs/ks_no_ravdess.safetensors \\
        --ablation "real corpora only=/runs/ks_real_only.safetensors" ... --write

It gathers, from each checkpoint's own meta (its test scores per corpus, computed once at the
end of its training), three tables, and fits the linear probe (``ser_core.probe``) on exactly the
training data of each run, so every model figure has its baseline beside it:

* ``probe``: the probe on the shipped model's mix, per corpus, on the same held-out speakers;
* ``cross_corpus``: runs of any model trained without a corpus and tested on all of it (``test:NAME``);
* ``ablation``: what augmentation and mixing bought (the same held-out speakers): model runs given
  with ``--ablation``, and ``probe_ablation``, the probe with and without augmentation and the demo
  corpus.

The Models page reads the file; nothing in it is typed by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .checkpoint import read_meta
from .data.mix import SYNTHETIC, CorpusSpec, split_of
from .model_card import REAL_VOICES, trained_on


def _specs(meta: dict[str, Any]) -> list[CorpusSpec]:
    mix = meta.get("training", {}).get("mix")
    if not mix:
        raise SystemExit("this checkpoint was not trained on a mix of corpora (--corpus ... repeated)")
    return [CorpusSpec(**m) for m in mix]


def _compact(scores: dict[str, Any]) -> dict[str, Any]:
    keep = ("wa", "ua", "macro_f1", "n", "predicted_share")
    return {k: scores[k] for k in keep if k in scores}


def build_report(model: str, cross: list[str], ablation: list[tuple[str, str]], log=print) -> dict[str, Any]:
    from .probe import run_probe

    meta = read_meta(model)
    training = meta["training"]
    classes = training.get("classes") or None
    probe_kw = {"classes": tuple(classes)} if classes else {}
    by = meta["metrics"]["test"]["by_corpus"]
    report: dict[str, Any] = {
        "model": Path(model).name,
        "corpora": [c for c in trained_on(meta) if c not in SYNTHETIC],
        "trained_on": trained_on(meta),
        "by_corpus": {k: _compact(v) for k, v in by.items()},
    }
    log("probe on the shipped model's mix")
    probe = run_probe(_specs(meta), progress=False, **split_of(training), **probe_kw)
    report["probe"] = {"level": probe["level"], "C": probe["C"],
                       "by_corpus": {k: _compact(v) for k, v in probe["test"]["by_corpus"].items()}}
    report["cross_corpus"] = []
    cross_probes: dict[tuple, dict[str, Any]] = {}  # runs of several models on one mix share its probe
    for path in cross:
        m = read_meta(path)
        specs = _specs(m)
        for spec in (s for s in specs if s.test_only):
            split = split_of(m["training"])
            key = (tuple(specs), *split.values())
            if key not in cross_probes:
                log(f"probe without {spec.name}")
                cross_probes[key] = run_probe(specs, progress=False, **split, **probe_kw)
            p = cross_probes[key]
            tests = m["metrics"]["test"].get("by_corpus") or {spec.name: m["metrics"]["test"]}
            ptests = p["test"].get("by_corpus") or {spec.name: p["test"]}
            report["cross_corpus"].append({
                "test": spec.name, "trained_on": trained_on(m), "checkpoint": Path(path).name,
                "model_name": m["model"],
                "model": _compact(tests[spec.name]), "probe": _compact(ptests[spec.name])})
    # what augmentation and mixing buy, measured with the probe on the same held-out speakers
    training_aug = {"augment_copies": training.get("augment_copies", 0),
                    "augment_seed": training.get("augment_seed", 0),
                    "augment_corpora": training.get("augment_corpora")}
    real_only = [s for s in _specs(meta) if s.name not in SYNTHETIC]
    synthetic = " + ".join(n for c, n in (("demo", "demo corpus"), ("demo-calm", "calm-voice set"))
                           if c in trained_on(meta)) or "nothing synthetic"
    report["probe_ablation"] = [{"setting": f"probe: real corpora + {synthetic}", "by_corpus":
                                 report["probe"]["by_corpus"]}]
    for setting, specs, kw in ((f"probe: real corpora + {synthetic}, augmented as the model", _specs(meta),
                                training_aug),
                               ("probe: real corpora only", real_only, {})):
        if not specs or (kw and not kw["augment_copies"]):
            continue
        log(setting)
        p = run_probe(specs, progress=False, **split_of(training), **probe_kw, **kw)
        report["probe_ablation"].append({"setting": setting, "by_corpus": {
            k: _compact(v) for k, v in (p["test"].get("by_corpus") or {specs[0].name: p["test"]}).items()}})
    report["ablation"] = [{"setting": f"shipped: real corpora + {synthetic}, augmented",
                           "by_corpus": report["by_corpus"]}]
    for setting, path in ablation:
        m = read_meta(path)
        test = m["metrics"]["test"]
        report["ablation"].append({"setting": setting, "checkpoint": Path(path).name,
                                   "by_corpus": {k: _compact(v) for k, v in
                                                 (test.get("by_corpus") or {trained_on(m)[0]: test}).items()}})
    return report


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("real-voices", help="gather the real-voice report (probe, cross-corpus, ablation)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the shipped checkpoint trained on the mix")
    p.add_argument("--cross", action="append", default=[], help="a checkpoint trained with a test:NAME corpus")
    p.add_argument("--ablation", action="append", default=[], metavar="SETTING=CHECKPOINT")
    p.add_argument("--keep-cross", action="store_true",
                   help=f"carry over the cross-corpus rows of the {REAL_VOICES} beside the model (they come "
                        "from their own checkpoints, not from --model)")
    p.add_argument("--write", action="store_true", help=f"write {REAL_VOICES} beside the model")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    ablation = [tuple(item.rsplit("=", 1)) for item in args.ablation]
    report = build_report(args.model, args.cross, ablation)
    earlier = Path(args.model).parent / REAL_VOICES
    if args.keep_cross and earlier.exists():
        new = {row["checkpoint"] for row in report["cross_corpus"]}
        report["cross_corpus"] += [row for row in json.loads(earlier.read_text()).get("cross_corpus", [])
                                   if row.get("checkpoint") not in new]
    # the default's model first, then the others by name; within a model, by the corpus left out
    report["cross_corpus"].sort(key=lambda r: (r.get("model_name", "ks_transformer") != "ks_transformer",
                                               r.get("model_name", "ks_transformer"), r["test"]))
    text = json.dumps(report, indent=1)
    if args.write:
        (Path(args.model).parent / REAL_VOICES).write_text(text + "\n")
    print(text)
    return 0
