"""Training on cached features (its command line, ``python -m ser_core train|evaluate``, is
``train_cli.py``).

    corpus loader → protocol fold (train / val carved from train / test)     train_data.py
      → FeatureExtractor.extract per utterance (disk cache: a second run encodes nothing)
      → model epochs (the model is chosen on validation UA, never on test)
      → checkpoint (safetensors + JSON meta, atomic) + metrics.jsonl + resume state
      → test scores, per corpus for a mix                                      scoring.py

Hyperparameter presets live in ``PRESETS``: "paper" is the KS-Transformer paper's setting
(sec. 3.2: SGD, lr 5e-4 halved every 30 epochs, dropout 0.5, batch 32); "fast" reaches a
usable model on the demo corpus in minutes on CPU (AdamW, cosine decay).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import metrics
from .checkpoint import load_checkpoint, read_meta, save_checkpoint
from .data.mix import SPLIT_SEED, VAL_SHARE, balance_weights, parse_val_fold, split_seed_of
from .errors import InputError
from .features import FeatureExtractor, atomic_write
from .models import build_model
from .models.base import collate_batch, model_class
from .scoring import predict, score_parts
from .train_data import (crop_features, drop_inputs, extract_all, length_grouped_batches, load_fold, split_clash,
                         with_augmented_copies, without_conflicts)

PRESETS: dict[str, dict[str, Any]] = {
    # KS-Transformer paper, sec. 3.2 (momentum is not stated; 0.9 is the usual SGD setting).
    "paper": dict(optimizer="sgd", lr=5e-4, momentum=0.9, weight_decay=0.0, step_size=30,
                  gamma=0.5, dropout=0.5, batch_size=32, epochs=120),
    "fast": dict(optimizer="adamw", lr=5e-4, momentum=0.0, weight_decay=1e-2, step_size=0,
                 gamma=1.0, dropout=0.3, batch_size=32, epochs=25),
}


@dataclass
class TrainConfig:
    model: str = "ks_transformer"
    corpus: str = "manifest"
    root: str = ""
    protocol: str = "predefined"
    fold: int = 0
    preset: str = "fast"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    dropout: float | None = None
    seed: int = 0  # the initialisation, each epoch's items, dropout: never which speakers are held out
    split_seed: int = SPLIT_SEED  # draws the speaker split of a corpus without its own (data/mix.py)
    val_share: float = VAL_SHARE  # of a corpus's non-test speakers, held out for validation (the same)
    # cross-validation over speakers (data/mix.py, cross_validation.py): "K/N" validates on fold K
    # of N of a corpus's non-test speakers; "none" trains on all of them (the refit); None: val_share
    val_fold: str | None = None
    # keep this epoch's model instead of the best on validation (the epoch the folds chose; a refit
    # with no validation speakers must say which)
    keep_epoch: int | None = None
    out: str = "checkpoints/model.safetensors"
    run_dir: str | None = None
    resume: bool = False
    max_utterances: int | None = None
    device: str | None = None
    # the encoders; None: the ``init_from`` checkpoint's, else whisper:tiny.en and minilm
    speech_encoder: str | None = None
    text_encoder: str | None = None
    sec_encoder: str | None = None  # MFSN's second speech encoder: "hf:<local data2vec/wav2vec2 dir>"
    max_seconds: float | None = 9.2  # training items are cut to this (the paper: 460 frames of 20 ms)
    half: bool = False  # store the final checkpoint's weights as float16 (small files to commit)
    model_args: dict[str, Any] = field(default_factory=dict)
    # fine-tune: start from this checkpoint's weights, with its model settings and encoders (the
    # ones given here replace them; see :func:`with_source_settings`)
    init_from: str | None = None
    state_every: int = 20  # write the resume state every this many batches (and at each epoch end)
    calibration_batches: int = 16  # training batches that re-estimate batch-norm statistics per epoch
    # several corpora in one run (data/mix.py): [{"name", "root", "test_only"}]; replaces corpus/root
    mix: list[dict[str, Any]] | None = None
    classes: list[str] | None = None  # the label set of a mix (default: ang, hap, neu, sad)
    balance: bool = True  # a mix samples every corpus, and every class in it, equally often
    augment_copies: int = 0  # augmented copies of every training utterance (augment.py), cached
    augment_seed: int = 0
    augment_corpora: list[str] | None = None  # corpora whose training utterances are augmented (None: all)
    augment_config: dict[str, Any] | None = None  # AugmentConfig overrides (None: augment.py's defaults)
    epoch_items: int | None = None  # a balanced mix draws this many items per epoch (default: all of them)
    corpus_shares: dict[str, float] | None = None  # a balanced mix: relative share per corpus (default 1 each)
    group_by_length: bool = False  # batches of similar length (less padding: faster epochs, same items)
    layer_mix_lr: float | None = None  # own learning rate for the encoder-layer mixing weights
    input_dropout: dict[str, float] | None = None  # modality dropout: {input: share of items zeroed}
    # KS-Transformer: each batch trains at a keep ratio k drawn uniformly from [lo, hi] (every KS
    # module the same k), instead of the configured ones; None trains at the configured k (Fig. 6)
    train_keep_ratio: tuple[float, float] | None = None
    # leave out of training the items whose words say another emotion than their label (the demo
    # corpus's ``conflict`` column: there the label follows the voice); validation and test keep them
    leave_out_conflicts: bool = False

    @classmethod
    def from_meta(cls, training: dict[str, Any]) -> "TrainConfig":
        """The settings a checkpoint's meta ``training`` records (its other entries, such as
        ``hyper`` or ``sizes``, left out), split as that run was split (:func:`split_seed_of`)."""
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in training.items() if k in known}, "split_seed": split_seed_of(training)})

    def hyper(self) -> dict[str, Any]:
        h = dict(PRESETS[self.preset])
        for key in ("epochs", "batch_size", "lr", "dropout"):
            if getattr(self, key) is not None:
                h[key] = getattr(self, key)
        return h


def run_dir_of(out: str | Path, run_dir: str | None = None) -> Path:
    """Where a run keeps its metrics.jsonl and resume state: ``run_dir``, else ``OUT.run`` beside
    the checkpoint ``out``."""
    out = Path(out)
    return Path(run_dir) if run_dir else out.with_suffix("").parent / (out.stem + ".run")


def check_epoch_choice(cfg: TrainConfig, epochs: int) -> None:
    """A run that keeps a given epoch must reach it; one with no validation speakers must keep one."""
    if cfg.keep_epoch is not None and not 1 <= cfg.keep_epoch <= epochs:
        raise InputError(f"The epoch to keep ({cfg.keep_epoch}) must be between 1 and the run's {epochs} epochs.")
    if parse_val_fold(cfg.val_fold) == (0, 0) and cfg.keep_epoch is None:
        raise InputError("With no validation speakers (validation fold none) nothing can choose the epoch: "
                         "give the epoch the cross-validation chose (--keep-epoch).")


# --- training ----------------------------------------------------------------------------------
class Stopped(Exception):
    """Raised inside :func:`train` when ``should_stop()`` says so (the state on disk is kept)."""


def train(cfg: TrainConfig, progress: bool = True, log=print, on_event=None, should_stop=None) -> dict[str, Any]:
    """Train, choose the epoch on validation UA, write the checkpoint; returns its meta.

    Crash safety: the resume state (model, optimisers, scheduler, RNG, position inside the epoch,
    the metrics so far) is written atomically every ``state_every`` batches and at each epoch's
    end, so a run killed at any moment (SIGKILL included) resumes with ``resume=True`` from the
    last state and continues exactly as an uninterrupted run would; the checkpoint file is only
    ever replaced whole. ``on_event(dict)`` receives progress events (for the Train page);
    ``should_stop()`` is polled between batches and stops the run after saving the state.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) each mini-batch is split over the processes and the
    gradients are averaged by DistributedDataParallel (gloo on CPU, nccl on GPU); rank 0 alone
    validates, logs and writes files.
    """
    cfg = with_source_settings(cfg)
    if cfg.init_from:  # refused before any feature is computed
        check_same_split(cfg)
    hyper = cfg.hyper()
    check_epoch_choice(cfg, hyper["epochs"])
    dist = _Distributed.start(cfg.device)
    device = dist.device
    emit = (on_event or (lambda event: None)) if dist.is_main else (lambda event: None)
    log = log if dist.is_main else (lambda *_: None)
    progress = progress and dist.is_main
    out = Path(cfg.out)
    run_dir = run_dir_of(out, cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.pt"
    _seed_everything(cfg.seed)

    fold = load_fold(cfg)
    if not fold.val:
        raise InputError("This run has nothing to validate on (every speaker trains). Keep a validation "
                         "part: a validation fold (e.g. 1/4), or another corpus in the mix.")
    labels = sorted({u.label for u in fold.train})
    train_items = without_conflicts(fold.train) if cfg.leave_out_conflicts else fold.train
    if len(train_items) < len(fold.train):
        log(f"left out {len(fold.train) - len(train_items)} training items whose words say another emotion")
    train_utts = with_augmented_copies(train_items, cfg.augment_copies, cfg.augment_seed, cfg.augment_corpora,
                                       cfg.augment_config)
    model_cls = model_class(cfg.model)
    extractor = FeatureExtractor(cfg.speech_encoder, cfg.text_encoder, device=device,
                                 sec_encoder=cfg.sec_encoder)
    model_config = _fill_config(model_cls, dict(
        audio_dim=extractor.speech_dim, audio_layers=extractor.speech_layers,
        text_dim=extractor.text_dim, num_classes=len(labels), labels=tuple(labels),
        dropout=hyper["dropout"],
    ), cfg.model_args)
    model = build_model(cfg.model, model_config).to(device)
    t0 = time.perf_counter()
    emit({"event": "features", "n": len(fold.train) + len(fold.val) + len(fold.test)})
    with dist.main_first():  # rank 0 fills the disk cache, the others then read it
        train_f = extract_all(train_utts, extractor, "train features", progress, model)
        val_f = extract_all(fold.val, extractor, "val features", progress, model)
        test_f = extract_all(fold.test, extractor, "test features", progress, model)
    if cfg.max_seconds:
        train_f = [crop_features(f, cfg.max_seconds) for f in train_f]
    feature_time = time.perf_counter() - t0
    index = {l: i for i, l in enumerate(labels)}
    y_train = torch.tensor([index[u.label] for u in train_utts])
    # a mix draws each epoch's items by balance_weights (with replacement), else a permutation
    sample_weights = (torch.tensor(balance_weights(train_utts, cfg.corpus_shares))
                      if cfg.mix and cfg.balance else None)

    if cfg.init_from:
        _init_from(model, cfg.init_from, device, log, labels)
    arch_params = list(model.arch_parameters()) if hasattr(model, "arch_parameters") else []
    arch_ids = {id(p) for p in arch_params}
    weight_params = [p for p in model.parameters() if id(p) not in arch_ids]
    # The softmax weights that mix the speech encoder's layers are a handful of scalars: at the
    # network's learning rate they barely leave uniform in ~1 000 steps (measured on the default
    # model: 0.19-0.21 each after 10 epochs), so they may get a learning rate of their own.
    mix_params = list(model.layer_mix_parameters()) if cfg.layer_mix_lr and hasattr(model, "layer_mix_parameters") else []
    mix_ids = {id(p) for p in mix_params}
    groups = [{"params": [p for p in weight_params if id(p) not in mix_ids]}]
    if mix_params:
        groups.append({"params": mix_params, "lr": cfg.layer_mix_lr, "weight_decay": 0.0})
    if hyper["optimizer"] == "sgd":
        opt = torch.optim.SGD(groups, lr=hyper["lr"], momentum=hyper["momentum"],
                              weight_decay=hyper["weight_decay"])
    else:
        opt = torch.optim.AdamW(groups, lr=hyper["lr"], weight_decay=hyper["weight_decay"])
    # DARTS (MFSN's fusion cell): the architecture weights alpha have their own Adam optimiser
    # (Liu et al. 2019: lr 3e-4, betas (0.5, 0.999), weight decay 1e-3), stepped on the same
    # training batches as the weights (first-order, joint).
    arch_opt = (torch.optim.Adam(arch_params, lr=hyper.get("arch_lr", 3e-4), betas=(0.5, 0.999),
                                 weight_decay=1e-3) if arch_params else None)
    if hyper["step_size"]:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hyper["step_size"], gamma=hyper["gamma"])
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hyper["epochs"])
    trained = dist.wrap(model)

    pos = {"epoch": 0, "batch": 0, "total": 0.0, "seen": 0}
    best: dict[str, Any] = {"val_ua": -1.0, "epoch": -1}
    history: list[dict[str, Any]] = []
    if cfg.resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if arch_opt is not None and "arch_optimizer" in state:
            arch_opt.load_state_dict(state["arch_optimizer"])
        sched.load_state_dict(state["scheduler"])
        pos = json.loads(state["position"])
        best, history = json.loads(state["best"]), json.loads(state["history"])
        _set_rng(state["rng"])
        log(f"resumed from {state_path} at epoch {pos['epoch'] + 1}, batch {pos['batch']}")
    elif dist.is_main:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)

    meta = {
        "model": cfg.model,
        "config": model.config.to_dict(),
        "encoders": {"speech": cfg.speech_encoder, "text": cfg.text_encoder, "sec": cfg.sec_encoder,
                     "identity": extractor.identity},
        "training": {**asdict(cfg), "hyper": hyper, "labels": labels, "world_size": dist.world,
                     "sizes": {"train": len(train_f), "val": len(val_f), "test": len(test_f)},
                     "fold": fold.name},
    }

    def save_state() -> None:
        if not dist.is_main:
            return
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "position": json.dumps(pos), "best": json.dumps(best), "history": json.dumps(history),
                 "rng": _get_rng()}
        if arch_opt is not None:
            state["arch_optimizer"] = arch_opt.state_dict()
        _atomic_torch_save(state_path, state)

    n = len(train_f) if sample_weights is None else (cfg.epoch_items or len(train_f))
    lengths = [len(f.frame_times) for f in train_f] if cfg.group_by_length else None
    bs = hyper["batch_size"]
    n_batches = (n + bs - 1) // bs
    emit({"event": "start", "epochs": hyper["epochs"], "batches": n_batches, "history": history,
          "labels": labels})
    while pos["epoch"] < hyper["epochs"]:
        epoch = pos["epoch"]
        trained.train()
        t_epoch = time.perf_counter()
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = (torch.multinomial(sample_weights, n, replacement=True, generator=generator)
                 if sample_weights is not None else torch.randperm(n, generator=generator))
        epoch_batches = ([order[i : i + bs].tolist() for i in range(0, n, bs)] if lengths is None
                         else length_grouped_batches(order.tolist(), lengths, bs, generator))
        batches = range(pos["batch"], n_batches)
        for b in tqdm(batches, desc=f"epoch {epoch + 1}", disable=not progress, leave=False):
            if should_stop is not None and should_stop():
                save_state()
                raise Stopped(f"stopped at epoch {epoch + 1}, batch {b}")
            idx = epoch_batches[b]
            mine = idx[dist.rank :: dist.world]
            if len(idx) < dist.world:  # too few for every process: skip (DDP needs all ranks)
                pos["batch"] = b + 1
                continue
            batch = collate_batch(model, [train_f[j] for j in mine], device)
            if cfg.input_dropout:
                batch = drop_inputs(batch, cfg.input_dropout,
                                    torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 10_007 + b))
            if cfg.train_keep_ratio is not None:
                lo, hi = cfg.train_keep_ratio
                u = torch.rand((), generator=torch.Generator().manual_seed(cfg.seed * 7_919 + epoch * 104_729 + b))
                logits = trained(batch, keep_ratio=lo + (hi - lo) * float(u)).logits
            else:
                logits = trained(batch).logits
            loss = F.cross_entropy(logits, y_train[mine].to(device))
            opt.zero_grad(set_to_none=True)
            if arch_opt is not None:
                arch_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(weight_params, 5.0)
            opt.step()
            if arch_opt is not None:
                arch_opt.step()
            pos["total"] += float(loss.detach()) * len(mine)
            pos["seen"] += len(mine)
            pos["batch"] = b + 1
            if cfg.state_every and pos["batch"] % cfg.state_every == 0 and pos["batch"] < n_batches:
                save_state()
            emit({"event": "batch", "epoch": epoch + 1, "batch": b + 1, "batches": n_batches,
                  "loss": float(loss.detach())})
        sched.step()
        if hasattr(model, "recalibrate_batch_norm"):  # batch norm after dropout (ILT/CAT)
            calib = order[: bs * cfg.calibration_batches].tolist()
            model.recalibrate_batch_norm(collate_batch(model, [train_f[j] for j in calib[i : i + bs]], device)
                                         for i in range(0, len(calib), bs))
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": pos["total"] / max(pos["seen"], 1),
                               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t_epoch}
        if dist.is_main:
            val_probs = predict(model, val_f, device)
            val = score_parts(labels, fold.val, val_probs)
            row.update({"val_wa": val["wa"], "val_ua": val["ua"], "val_macro_f1": val["macro_f1"]})
            if "by_corpus" in val:
                row["val_ua_by_corpus"] = {c: v["ua"] for c, v in val["by_corpus"].items()}
            # the epoch kept: the best on validation, or the one the run was told to keep
            if (epoch + 1 == cfg.keep_epoch) if cfg.keep_epoch else val["ua"] > best["val_ua"]:
                best = {"val_ua": val["ua"], "val_wa": val["wa"], "epoch": epoch + 1}
                save_checkpoint(out, model, {**meta, "metrics": {"val": val, "epoch": epoch + 1}})
                row["saved"] = True
            row["val_confusion"] = metrics.confusion_matrix(
                [u.label for u in fold.val], [labels[i] for i in val_probs.argmax(1)], labels=labels).tolist()
        history.append(row)
        pos = {"epoch": epoch + 1, "batch": 0, "total": 0.0, "seen": 0}
        save_state()
        if dist.is_main:
            atomic_write(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history).encode())
        log(json.dumps({k: v for k, v in row.items() if k != "val_confusion"}))
        emit({"event": "epoch", **row})
        dist.barrier()

    if not dist.is_main:
        dist.stop()
        return {}
    # the chosen (best-validation) model, scored once on the test fold
    best_model, best_meta = load_checkpoint(out, device=device)
    if hasattr(best_model, "choose_on_validation"):  # e.g. MFSN's Choice Cell level
        chosen = best_model.choose_on_validation(
            lambda: score_parts(labels, fold.val, predict(best_model, val_f, device))["ua"])
        best_meta["config"] = best_model.config.to_dict()
        best_meta["chosen_on_validation"] = chosen
        log(json.dumps({"chosen_on_validation": chosen}))
    test_probs = predict(best_model, test_f, device)
    test = score_parts(labels, fold.test, test_probs)
    best_meta["metrics"] = {**best_meta.get("metrics", {}), "test": test,
                            "feature_seconds": feature_time,
                            "epoch_seconds": [round(r["seconds"], 2) for r in history]}
    save_checkpoint(out, best_model, best_meta, half=cfg.half)
    log(json.dumps({"test": test, "best_epoch": best["epoch"], "checkpoint": str(out)}))
    emit({"event": "done", "test": test, "checkpoint": str(out)})
    dist.stop()
    return best_meta


def _fill_config(model_cls: type, available: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The trainer's values for the Config fields the model has, then the user's overrides."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(model_cls.Config)}
    return {**{k: v for k, v in available.items() if k in names}, **overrides}


#: Config fields a run sets from its data and preset, never from the checkpoint it starts from.
_FROM_THE_RUN = ("audio_dim", "audio_layers", "text_dim", "num_classes", "labels", "dropout")


def with_source_settings(cfg: TrainConfig) -> TrainConfig:
    """The run's settings with its encoders resolved. Fine-tuning (``init_from``) continues the
    checkpoint's model: its encoders and its model settings (``d_model``, ``text_feature_layers``,
    …) unless the run names others, so that every weight fits. Without this, fine-tuning the
    shipped default (``d_model`` 96, words encoded on their own) from the Train page built a
    ``d_model`` 128 model on sentence-context word vectors, and almost nothing was loaded."""
    source = _source_meta(cfg.init_from, cfg.model) if cfg.init_from else {}
    encoders = source.get("encoders") or {}
    inherited = {k: v for k, v in (source.get("config") or {}).items() if k not in _FROM_THE_RUN}
    return replace(
        cfg,
        speech_encoder=cfg.speech_encoder or encoders.get("speech") or "whisper:tiny.en",
        text_encoder=cfg.text_encoder or encoders.get("text") or "minilm",
        sec_encoder=cfg.sec_encoder if cfg.sec_encoder is not None else encoders.get("sec"),
        model_args={**inherited, **cfg.model_args},
    )


#: Pairs of models that are one network under two names, so that either starts from the other's
#: weights: FE2E is MESM without its cross-modal attention layers (Dai et al. 2021, Sec. 4.2), and
#: MESM at top_p = 1 computes exactly what FE2E computes with the same weights. A MESM started from
#: a FE2E file begins with FE2E's CNNs, Transformers and heads and learns only its attention layers
#: (W_m, W_q, W_i of eq. 1–2) from their initial values; a FE2E started from MESM drops them.
SAME_NETWORK = (frozenset({"mesm", "fe2e"}),)


def same_network(source_model: str | None, model: str) -> bool:
    """Whether a checkpoint of ``source_model`` can start a run of ``model``."""
    return source_model == model or frozenset({source_model, model}) in SAME_NETWORK


def _source_meta(checkpoint: str, model: str) -> dict[str, Any]:
    """The meta of the checkpoint a run fine-tunes, refused (InputError) when it holds another model
    (other than another name for the same network, :data:`SAME_NETWORK`)."""
    meta = read_meta(checkpoint)
    if not same_network(meta.get("model"), model):
        raise InputError(f"{Path(checkpoint).name} holds a {meta.get('model')} model, not {model}; "
                         "fine-tuning starts from a checkpoint of the same model.")
    return meta


def _shape_clash(own: dict[str, torch.Size], theirs: dict[str, torch.Size], n_old: int | None,
                 n_new: int) -> str | None:
    """What keeps a checkpoint's weights out of the run's model: a tensor of another shape (a
    classifier's class dimension may differ when the classes do), in words; None when all fit."""

    def class_dim_only(a: torch.Size, b: torch.Size) -> bool:
        return (n_old not in (None, n_new) and len(a) == len(b)
                and all(x == y or {x, y} == {n_old, n_new} for x, y in zip(a, b)))

    clash = [k for k, v in theirs.items() if k in own and own[k] != v and not class_dim_only(own[k], v)]
    if not clash:
        return None
    return (f"{len(clash)} of its weights would have other shapes (first: {clash[0]}, "
            f"{tuple(theirs[clash[0]])} in the checkpoint, {tuple(own[clash[0]])} here). Leave out the "
            "model settings that change its size, so that fine-tuning keeps the checkpoint's")


def check_fine_tune(checkpoint: str, model_args: dict[str, Any], model: str | None = None) -> None:
    """Refuse at once (InputError) when the checkpoint holds another model than ``model`` (when
    given), or when ``model_args`` change the size of its model, which fine-tuning would otherwise
    find only once the features are computed. Shapes only: both models are built on PyTorch's
    "meta" device, without memory or weights."""
    meta = _source_meta(checkpoint, model) if model else read_meta(checkpoint)
    base = meta.get("config") or {}
    shapes = []
    for overrides in ({}, model_args):
        with torch.device("meta"):
            model = build_model(meta["model"], {**base, **overrides})
        shapes.append({k: v.shape for k, v in model.state_dict().items()})
    why = _shape_clash(shapes[1], shapes[0], None, 0)
    if why:
        raise InputError(f"{Path(checkpoint).name} does not fit the model these settings build: {why}.")


def check_same_split(cfg: TrainConfig) -> None:
    """Refuse (InputError) fine-tuning ``cfg.init_from`` when the run would test on voices that
    checkpoint trained on (:func:`ser_core.train_data.split_clash`)."""
    why = split_clash(cfg, read_meta(cfg.init_from).get("training") or {})
    if why:
        raise InputError(f"{Path(cfg.init_from).name} cannot start this run: {why}.")


def _init_from(model, checkpoint: str, device, log, labels: list[str]) -> None:
    """Fine-tuning: start from a checkpoint's weights (same model, or the same network under its other
    name: :data:`SAME_NETWORK`; the tensors one of them lacks keep their initial values). Only the
    classifier may differ, and only when the run's classes do; any other tensor of another shape means
    the run's model settings differ from the checkpoint's, and is refused rather than trained from scratch."""
    source, meta = load_checkpoint(checkpoint, device=device)
    if not same_network(meta["model"], model.model_name):
        raise InputError(f"{checkpoint} holds a {meta['model']} model, not {model.model_name}.")
    own, theirs = model.state_dict(), source.state_dict()
    why = _shape_clash({k: v.shape for k, v in own.items()}, {k: v.shape for k, v in theirs.items()},
                       len(meta.get("config", {}).get("labels") or ()) or None, len(labels))
    if why:
        raise InputError(f"{Path(checkpoint).name} does not fit the model this run builds: {why}.")
    loaded = {k: v for k, v in theirs.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(loaded, strict=False)
    log(f"initialised {len(loaded)}/{len(own)} tensors from {checkpoint}")


class _Distributed:
    """torch.distributed when started by torchrun (WORLD_SIZE > 1), else a single process."""

    def __init__(self, world: int, rank: int, device: torch.device) -> None:
        self.world, self.rank, self.device = world, rank, device

    @classmethod
    def start(cls, device: str | None) -> "_Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(1, 0, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
        import torch.distributed as tdist

        use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
        if use_cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            dev = torch.device("cuda", local)
        else:
            dev = torch.device("cpu")
        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if use_cuda else "gloo")
        return cls(tdist.get_world_size(), tdist.get_rank(), dev)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model):
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as tdist

            tdist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. fills the disk cache), then the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def stop(self) -> None:
        if self.world > 1:
            import torch.distributed as tdist

            tdist.barrier()
            tdist.destroy_process_group()


# --- RNG and state helpers ---------------------------------------------------------------------
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _get_rng() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": json.dumps(np.random.get_state()[1].tolist()),
            "numpy_pos": int(np.random.get_state()[2]), "python": json.dumps(random.getstate()[1])}


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = np.array(json.loads(state["numpy"]), dtype=np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(json.loads(state["python"])), None))


def _atomic_torch_save(path: Path, obj: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
