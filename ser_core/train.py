"""Training on cached features (``python -m ser_core train|evaluate``).

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

import argparse
import contextlib
import dataclasses
import json
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import metrics
from .checkpoint import load_checkpoint, save_checkpoint
from .data.mix import balance_weights, corpus_specs
from .errors import InputError
from .features import FeatureExtractor, atomic_write
from .models import build_model
from .models.base import collate_batch, model_class
from .scoring import evaluate, predict, score_parts
from .train_data import crop_features, extract_all, length_grouped_batches, load_fold, with_augmented_copies

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
    seed: int = 0
    out: str = "checkpoints/model.safetensors"
    run_dir: str | None = None
    resume: bool = False
    max_utterances: int | None = None
    device: str | None = None
    speech_encoder: str = "whisper:tiny.en"
    text_encoder: str = "minilm"
    sec_encoder: str | None = None  # MFSN's second speech encoder: "hf:<local data2vec/wav2vec2 dir>"
    max_seconds: float | None = 9.2  # training items are cut to this (the paper: 460 frames of 20 ms)
    half: bool = False  # store the final checkpoint's weights as float16 (small files to commit)
    model_args: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # fine-tune: start from this checkpoint's weights
    state_every: int = 20  # write the resume state every this many batches (and at each epoch end)
    calibration_batches: int = 16  # training batches that re-estimate batch-norm statistics per epoch
    # several corpora in one run (data/mix.py): [{"name", "root", "test_only"}]; replaces corpus/root
    mix: list[dict[str, Any]] | None = None
    classes: list[str] | None = None  # the label set of a mix (default: ang, hap, neu, sad)
    balance: bool = True  # a mix samples every corpus, and every class in it, equally often
    augment_copies: int = 0  # augmented copies of every training utterance (augment.py), cached
    augment_seed: int = 0
    augment_corpora: list[str] | None = None  # corpora whose training utterances are augmented (None: all)
    epoch_items: int | None = None  # a balanced mix draws this many items per epoch (default: all of them)
    corpus_shares: dict[str, float] | None = None  # a balanced mix: relative share per corpus (default 1 each)
    group_by_length: bool = False  # batches of similar length (less padding: faster epochs, same items)
    layer_mix_lr: float | None = None  # own learning rate for the encoder-layer mixing weights

    def hyper(self) -> dict[str, Any]:
        h = dict(PRESETS[self.preset])
        for key in ("epochs", "batch_size", "lr", "dropout"):
            if getattr(self, key) is not None:
                h[key] = getattr(self, key)
        return h


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
    hyper = cfg.hyper()
    dist = _Distributed.start(cfg.device)
    device = dist.device
    emit = (on_event or (lambda event: None)) if dist.is_main else (lambda event: None)
    log = log if dist.is_main else (lambda *_: None)
    progress = progress and dist.is_main
    out = Path(cfg.out)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else out.with_suffix("").parent / (out.stem + ".run")
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.pt"
    _seed_everything(cfg.seed)

    fold = load_fold(cfg)
    labels = sorted({u.label for u in fold.train})
    train_utts = with_augmented_copies(fold.train, cfg.augment_copies, cfg.augment_seed, cfg.augment_corpora)
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
        _init_from(model, cfg.init_from, device, log)
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
            if val["ua"] > best["val_ua"]:
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


def _init_from(model, checkpoint: str, device, log) -> None:
    """Fine-tuning: start from a checkpoint's weights (same model; the classifier may differ)."""
    source, meta = load_checkpoint(checkpoint, device=device)
    if meta["model"] != model.model_name:
        raise InputError(f"{checkpoint} holds a {meta['model']} model, not {model.model_name}.")
    own = model.state_dict()
    loaded = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
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
    p.add_argument("--epoch-items", type=int, help="a mix: items drawn per epoch (default: as many as "
                                                   "there are training items)")
    p.add_argument("--corpus-share", action="append", default=[], metavar="NAME=SHARE",
                   help="a balanced mix: this corpus's relative share of each epoch (default 1 each), "
                        "e.g. ravdess=2 (repeatable)")
    p.add_argument("--group-by-length", action="store_true",
                   help="batches of utterances of similar length (less padding, faster epochs)")
    p.add_argument("--layer-mix-lr", type=float,
                   help="own learning rate for the weights that mix the speech encoder's layers")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--preset", default="fast", choices=sorted(PRESETS))
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="checkpoints/model.safetensors")
    p.add_argument("--run-dir", default=None, help="metrics.jsonl and resume state (default: beside --out)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--max-utterances", type=int)
    p.add_argument("--device")
    p.add_argument("--half", action="store_true", help="store the final weights as float16")
    p.add_argument("--init-from", help="fine-tune: start from this checkpoint's weights")
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


def _parse_shares(items: list[str]) -> dict[str, float] | None:
    """["ravdess=2", "tess=0.5"] → {"ravdess": 2.0, "tess": 0.5} (None when none is given)."""
    shares = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            shares[name.strip().lower()] = float(value)
        except ValueError:  # no "=" leaves value empty: the same message
            raise InputError(f"--corpus-share takes NAME=SHARE, like ravdess=2; got {item!r}.") from None
    return shares or None


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


def _train_cli(args: argparse.Namespace) -> int:
    choice = corpus_choice(args.corpus, args.root)
    if args.protocol != "predefined" and "mix" in choice:
        raise InputError("A mix of corpora is always split by speaker per corpus; leave out --protocol.")
    cfg = TrainConfig(
        **choice, protocol=args.protocol,
        classes=args.classes.split(",") if args.classes else None, balance=not args.no_balance,
        augment_copies=args.augment, augment_seed=args.augment_seed,
        augment_corpora=args.augment_corpora.split(",") if args.augment_corpora else None,
        epoch_items=args.epoch_items, group_by_length=args.group_by_length, layer_mix_lr=args.layer_mix_lr,
        corpus_shares=_parse_shares(args.corpus_share),
        model=args.model,
        fold=args.fold, preset=args.preset, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, dropout=args.dropout, seed=args.seed, out=args.out, run_dir=args.run_dir,
        resume=args.resume, max_utterances=args.max_utterances, device=args.device,
        half=args.half, model_args=_parse_model_args(args.model_arg), init_from=args.init_from,
        max_seconds=args.max_seconds or None, state_every=args.state_every, sec_encoder=args.sec_encoder,
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
    if args.corpus == "demo":
        from .data.mix import demo_manifest

        args.corpus, args.root = "manifest", str(demo_manifest())
    result = evaluate(args.checkpoint, args.corpus, _default_root(args), args.protocol, args.fold,
                      args.split, args.device, keep_ratio=args.keep_ratio, top_p=args.top_p)
    print(json.dumps({k: v for k, v in result.items() if k != "predictions"}, indent=2))
    if args.write:
        if args.protocol != "speakers":
            raise InputError("--write stores held-out-speaker scores: use it with --protocol speakers.")
        from .checkpoint import read_meta, update_meta

        metrics_ = read_meta(args.checkpoint).get("metrics", {})
        held = dict(metrics_.get("held_out_speakers", {}))
        name = "demo" if args.corpus == "manifest" else args.corpus
        held[name] = {k: result[k] for k in ("wa", "ua", "macro_f1", "n", "fold")}
        held[name]["predicted_share"] = {label: sum(p["pred"] == label for p in result["predictions"]) / result["n"]
                                         for label in result["labels"]}
        update_meta(args.checkpoint, {"metrics": {**metrics_, "held_out_speakers": held}})
    return 0
