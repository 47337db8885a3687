"""``python -m ser_core train`` and ``evaluate``: the command line of :mod:`ser_core.train`.

Parses the options (corpora and their folders, a mix, augmentation, presets, model settings) into a
:class:`~ser_core.train.TrainConfig`; the Train page builds the same command (``ser_core.jobs``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from .corpus_choice import parse_shares
from .data.mix import SPLIT_SEED, VAL_SHARE, corpus_specs, parse_val_fold
from .errors import InputError
from .scoring import evaluate
from .train import PRESETS, Stopped, TrainConfig, train


# --- command line ------------------------------------------------------------------------------
def add_cli(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model on a corpus (features cached)",
                              description="Train a model; the epoch is chosen on validation UA.")
    p.add_argument("--model", default="ks_transformer")
    p.add_argument("--corpus", action="append", default=[],
                   help="iemocap | ravdess | tess | savee | cremad | meld | manifest | demo; repeat it to "
                        "train on a mix (each corpus split by speaker, classes balanced); test:NAME scores "
                        "a corpus without training on it (default: the demo corpus)")
    p.add_argument("--root", action="append", default=[],
                   help="each corpus's folder (or manifest CSV), in the order of --corpus; demo needs none")
    p.add_argument("--protocol", default="predefined",
                   help="one corpus: predefined | loso | lospk | random | speakers (a mix always uses speakers)")
    p.add_argument("--classes", help="a mix's labels, comma-separated (default ang,hap,neu,sad)")
    p.add_argument("--no-balance", action="store_true", help="a mix: do not balance corpora and classes")
    p.add_argument("--augment", type=int, default=0, metavar="N",
                   help="add N augmented copies of each training utterance (noise, room, microphone, "
                        "speed, pitch; reproducible from --augment-seed)")
    p.add_argument("--augment-seed", type=int, default=0)
    p.add_argument("--augment-corpora", help="comma-separated corpora to augment (default: all)")
    p.add_argument("--augment-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a range or probability of the augmentation chain (ser_core/augment.py AugmentConfig), "
                        "e.g. semitones=-4,4 or p_pitch=0.6; repeatable")
    p.add_argument("--epoch-items", type=int, help="a mix: items drawn per epoch (default: as many as "
                                                   "there are training items)")
    p.add_argument("--corpus-share", action="append", default=[], metavar="NAME=SHARE",
                   help="a balanced mix: this corpus's relative share of each epoch (default 1 each), "
                        "e.g. ravdess=2 (repeatable)")
    p.add_argument("--group-by-length", action="store_true",
                   help="batches of utterances of similar length (less padding, faster epochs)")
    p.add_argument("--layer-mix-lr", type=float,
                   help="own learning rate for the weights that mix the speech encoder's layers")
    p.add_argument("--input-dropout", action="append", default=[], metavar="INPUT=SHARE",
                   help="modality dropout: this share of training items get the input zeroed, e.g. audio=0.3")
    p.add_argument("--train-keep-ratio", metavar="LO,HI",
                   help="KS-Transformer: train each batch at a keep ratio drawn uniformly from LO..HI "
                        "(e.g. 0.2,0.8); the model's own keep ratios stay what it answers with")
    p.add_argument("--leave-out-conflicts", action="store_true",
                   help="leave out of training the items whose words say another emotion than the label "
                        "(the demo corpus's conflicting sentences); validation and test keep them")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--preset", default="fast", choices=sorted(PRESETS))
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--seed", type=int, default=0,
                   help="initialisation, order of the items, dropout (not which speakers are held out)")
    p.add_argument("--split-seed", type=int, default=SPLIT_SEED,
                   help="draws the held-out speakers of a corpus without its own split (default 0, as "
                        "every shipped model; fine-tuning needs its checkpoint's)")
    p.add_argument("--val-share", type=float, default=VAL_SHARE,
                   help="share of a corpus's non-test speakers held out for validation (default 0.15, as "
                        "every shipped model; the test speakers do not change with it)")
    p.add_argument("--val-fold", metavar="K/N",
                   help="validate on fold K of N of each corpus's non-test speakers (a cross-validation: run "
                        "K = 1..N, then `python -m ser_core cv`), or none: train on all of them (the refit; "
                        "needs --keep-epoch)")
    p.add_argument("--keep-epoch", type=int, metavar="E",
                   help="keep epoch E's model instead of the best on validation (the epoch `cv` chose)")
    p.add_argument("--out", default="checkpoints/model.safetensors")
    p.add_argument("--run-dir", default=None, help="metrics.jsonl and resume state (default: beside --out)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--max-utterances", type=int)
    p.add_argument("--device")
    p.add_argument("--half", action="store_true", help="store the final weights as float16")
    p.add_argument("--init-from", help="fine-tune: start from this checkpoint's weights")
    p.add_argument("--text-encoder", choices=("minilm", "minilm-isolated"),
                   help="minilm-isolated: each word encoded on its own (no sentence context in a word)")
    p.add_argument("--sec-encoder", help="MFSN: second speech encoder, hf:<local data2vec/wav2vec2 dir> "
                   "(then also --model-arg sec_source=extra --model-arg sec_dim=<its width>)")
    p.add_argument("--max-seconds", type=float, default=9.2, help="cut training utterances to this (0: no cut)")
    p.add_argument("--state-every", type=int, default=20, help="write the resume state every N batches")
    p.add_argument("--events", help="append progress events here as JSON lines (for the Train page)")
    p.add_argument("--stop-file", help="stop (after saving the resume state) when this file appears")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, e.g. --model-arg d_model=96 (repeatable)")
    p.set_defaults(func=_train_cli)

    e = subparsers.add_parser("evaluate", help="score a checkpoint on a corpus (WA, UA, confusion matrix)")
    e.add_argument("checkpoint")
    e.add_argument("--corpus", default="manifest", help="a corpus name (demo needs no --root)")
    e.add_argument("--root", default=None)
    e.add_argument("--protocol", default="predefined",
                   help="predefined | loso | lospk | random | speakers (a mix's split) | all (cross-corpus)")
    e.add_argument("--fold", type=int, default=0)
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--keep-ratio", type=float)
    e.add_argument("--top-p", type=float)
    e.add_argument("--device")
    e.add_argument("--augmented", type=int, metavar="SEED",
                   help="score one augmented copy of each clip instead (the training chain: another voice, "
                        "room, microphone and level; seeded from SEED and the clip)")
    e.add_argument("--write", action="store_true",
                   help="with --protocol speakers: store the scores in the checkpoint (the Models page shows them)")
    e.set_defaults(func=_evaluate_cli)


def _default_root(args) -> str:
    if args.root:
        return args.root
    from .paths import default_corpus_dir

    manifest = default_corpus_dir() / "manifest.csv"
    if not manifest.exists():
        raise InputError(f"No corpus given and no demo corpus at {manifest}: run `python -m ser_core corpus` first.")
    return str(manifest)


def _parse_model_args(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def corpus_choice(corpora: list[str], roots: list[str]) -> dict[str, Any]:
    """TrainConfig fields for the ``--corpus/--root`` lists (shared by the CLI and the Train page):
    one corpus keeps its protocol; several (or one marked test:) become a mix."""
    corpora = [c for c in corpora if c]
    if not corpora:  # no --corpus: a manifest at --root, else the demo corpus
        if len(roots) > 1:
            raise InputError("Several --root folders but no --corpus: name each folder's corpus.")
        if roots:
            return {"corpus": "manifest", "root": roots[0]}
        corpora = ["demo"]
    if len(corpora) == 1 and not corpora[0].lower().startswith("test:"):
        name = corpora[0].lower()
        if name == "demo":
            from .data.mix import demo_manifest

            return {"corpus": "manifest", "root": str(demo_manifest())}
        if not roots:
            raise InputError(f"The corpus {name} needs a folder: give --root.")
        return {"corpus": name, "root": roots[0]}
    specs = corpus_specs(corpora, roots)
    return {"corpus": "mix", "root": "", "mix": [dataclasses.asdict(s) for s in specs]}


def _parse_range(text: str | None, model: str) -> tuple[float, float] | None:
    """--train-keep-ratio "0.2,0.8" → (0.2, 0.8); only the KS-Transformer has a keep ratio."""
    if text is None:
        return None
    if model != "ks_transformer":
        raise InputError("--train-keep-ratio is for the KS-Transformer (the other models have no keep ratio).")
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--train-keep-ratio takes two numbers, e.g. 0.2,0.8; got {text!r}.") from None
    if not 0 < lo <= hi <= 1:
        raise InputError(f"--train-keep-ratio needs 0 < LO ≤ HI ≤ 1; got {text!r}.")
    return lo, hi


def _val_share(share: float) -> float:
    if not 0 < share < 0.8:
        raise InputError(f"--val-share {share:g}: hold out more than 0 and less than 0.8 of the speakers "
                         "for validation.")
    return share


def _val_fold(text: str | None) -> str | None:
    """--val-fold "2/4" or "none", checked at once (the split reads it again from the meta)."""
    parse_val_fold(text)
    return None if text is None else str(text).strip().lower()


def _parse_augment_args(items: list[str], copies: int) -> dict[str, Any] | None:
    """``--augment-arg KEY=VALUE`` → AugmentConfig overrides (a pair as ``lo,hi``), checked at once."""
    from .augment import AugmentConfig

    if not items:
        return None
    if not copies:
        raise InputError("--augment-arg changes the augmented copies; add --augment N to make some.")
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--augment-arg wants KEY=VALUE, got {item!r}.")
        try:
            out[key.strip()] = [float(v) for v in value.split(",")] if "," in value else float(value)
        except ValueError:
            raise InputError(f"--augment-arg {key}: {value!r} is not a number or a pair lo,hi.") from None
    try:
        return AugmentConfig.from_dict(out).to_dict()
    except (TypeError, ValueError) as e:
        raise InputError(f"--augment-arg: {e}.") from None


def _train_cli(args: argparse.Namespace) -> int:
    choice = corpus_choice(args.corpus, args.root)
    if args.protocol != "predefined" and "mix" in choice:
        raise InputError("A mix of corpora is always split by speaker per corpus; leave out --protocol.")
    cfg = TrainConfig(
        **choice, protocol=args.protocol,
        classes=args.classes.split(",") if args.classes else None, balance=not args.no_balance,
        augment_copies=args.augment, augment_seed=args.augment_seed,
        augment_corpora=args.augment_corpora.split(",") if args.augment_corpora else None,
        augment_config=_parse_augment_args(args.augment_arg, args.augment),
        epoch_items=args.epoch_items, group_by_length=args.group_by_length, layer_mix_lr=args.layer_mix_lr,
        corpus_shares=parse_shares(args.corpus_share, "--corpus-share", "ravdess=2"),
        input_dropout=parse_shares(args.input_dropout, "--input-dropout", "audio=0.3"),
        train_keep_ratio=_parse_range(args.train_keep_ratio, args.model),
        leave_out_conflicts=args.leave_out_conflicts,
        model=args.model,
        fold=args.fold, preset=args.preset, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, dropout=args.dropout, seed=args.seed, split_seed=args.split_seed,
        val_share=_val_share(args.val_share), val_fold=_val_fold(args.val_fold), keep_epoch=args.keep_epoch,
        out=args.out, run_dir=args.run_dir,
        resume=args.resume, max_utterances=args.max_utterances, device=args.device,
        half=args.half, model_args=_parse_model_args(args.model_arg), init_from=args.init_from,
        max_seconds=args.max_seconds or None, state_every=args.state_every, sec_encoder=args.sec_encoder,
        text_encoder=args.text_encoder,
    )
    on_event = should_stop = None
    if args.events:
        events = Path(args.events)
        events.parent.mkdir(parents=True, exist_ok=True)

        def on_event(event: dict[str, Any]) -> None:
            with open(events, "a") as f:
                f.write(json.dumps({**event, "time": time.time()}) + "\n")

    if args.stop_file:
        stop_file = Path(args.stop_file)
        should_stop = stop_file.exists
    try:
        train(cfg, on_event=on_event, should_stop=should_stop)
    except Stopped as stopped:
        print(f"{stopped}; continue with --resume")
        if on_event is not None:
            on_event({"event": "stopped", "message": str(stopped)})
        return 3
    return 0


def _evaluate_cli(args: argparse.Namespace) -> int:
    from .data.mix import ROOTLESS, demo_manifest

    named = args.corpus
    if args.corpus in ROOTLESS:  # the generated corpora: their manifests in the cache
        args.corpus, args.root = "manifest", str(demo_manifest(args.corpus))
    if args.write and args.augmented is not None:
        raise InputError("--write stores the scores on the clips themselves: leave out --augmented.")
    result = evaluate(args.checkpoint, args.corpus, _default_root(args), args.protocol, args.fold,
                      args.split, args.device, keep_ratio=args.keep_ratio, top_p=args.top_p,
                      augment_seed=args.augmented)
    print(json.dumps({k: v for k, v in result.items() if k != "predictions"}, indent=2))
    if args.write:
        if args.protocol != "speakers":
            raise InputError("--write stores held-out-speaker scores: use it with --protocol speakers.")
        from .checkpoint import read_meta, update_meta

        metrics_ = read_meta(args.checkpoint).get("metrics", {})
        held = dict(metrics_.get("held_out_speakers", {}))
        name = "demo" if named == "manifest" else named
        held[name] = {k: result[k] for k in ("wa", "ua", "macro_f1", "n", "fold")}
        held[name]["predicted_share"] = {label: sum(p["pred"] == label for p in result["predictions"]) / result["n"]
                                         for label in result["labels"]}
        update_meta(args.checkpoint, {"metrics": {**metrics_, "held_out_speakers": held}})
    return 0
