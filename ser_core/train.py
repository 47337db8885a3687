"""Training and evaluation on cached features (``python -m ser_core train|evaluate``).

    corpus loader → protocol fold (train / val carved from train / test)
      → FeatureExtractor.extract per utterance (disk cache: a second run encodes nothing)
      → model epochs (the model is chosen on validation UA, never on test)
      → checkpoint (safetensors + JSON meta, atomic) + metrics.jsonl + resume state

Hyperparameter presets live in ``PRESETS``: "paper" is the KS-Transformer paper's setting
(sec. 3.2: SGD, lr 5e-4 halved every 30 epochs, dropout 0.5, batch 32); "fast" reaches a
usable model on the demo corpus in minutes on CPU (AdamW, cosine decay).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import metrics
from .audio import load_audio
from .checkpoint import load_checkpoint, save_checkpoint
from .data import load_corpus
from .data.base import Utterance
from .data import protocols
from .errors import InputError
from .features import EXTRAS, FeatureExtractor, Features, atomic_write
from .models import build_model
from .models.base import collate_batch, feature_extras, model_class, model_inputs

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

    def hyper(self) -> dict[str, Any]:
        h = dict(PRESETS[self.preset])
        for key in ("epochs", "batch_size", "lr", "dropout"):
            if getattr(self, key) is not None:
                h[key] = getattr(self, key)
        return h


# --- data --------------------------------------------------------------------------------------
def load_fold(cfg: TrainConfig) -> protocols.Fold:
    utts = load_corpus(cfg.corpus, cfg.root)
    if cfg.max_utterances:
        rng = random.Random(cfg.seed)
        utts = list(utts)
        rng.shuffle(utts)
        utts = utts[: cfg.max_utterances]
    folds = list(_folds(cfg.protocol, utts, cfg.seed))
    if not folds:
        raise InputError(f"protocol {cfg.protocol!r} gave no folds for this corpus")
    if cfg.fold >= len(folds):
        raise InputError(f"fold {cfg.fold} does not exist: protocol gives {len(folds)} folds")
    return folds[cfg.fold]


def _folds(protocol: str, utts: list[Utterance], seed: int) -> Iterable[protocols.Fold]:
    if protocol == "predefined":
        return protocols.predefined_split(utts)
    if protocol in ("loso", "leave-one-session-out"):
        return protocols.leave_one_session_out(utts)
    if protocol in ("lospk", "leave-one-speaker-out"):
        return protocols.leave_one_speaker_out(utts)
    if protocol in ("random", "stratified"):
        return protocols.stratified_split(utts, seed=seed)
    raise InputError(f"unknown protocol {protocol!r}")


def utterance_audio(utt: Utterance) -> np.ndarray:
    if utt.start is not None and utt.end is not None and utt.audio.suffix.lower() not in (".wav", ".flac"):
        from .audio import load_audio_segment

        return load_audio_segment(utt.audio, utt.start, utt.end)
    return load_audio(utt.audio)


def extract_all(
    utts: list[Utterance], extractor: FeatureExtractor, desc: str = "features", progress: bool = True,
    model=None,
) -> list[Features]:
    """Features for every utterance (disk-cached: a second call decodes and encodes nothing).

    Only what the model reads (its ``inputs``) is kept in memory, speech states as float16. A
    corpus video in which no face is found is used without faces (with a warning), as an
    utterance without video is.
    """
    inputs = model_inputs(model) if model is not None else ("speech", "text")
    extras = feature_extras(model) if model is not None else ()
    out, faceless = [], []
    for utt in tqdm(utts, desc=desc, disable=not progress, leave=False):
        audio = utterance_audio(utt)
        video = utt.video if "faces" in extras else None
        try:
            feats = extractor.extract(audio, transcript=utt.transcript, video=video, extras=extras)
        except InputError:
            if video is None:
                raise
            faceless.append(utt.id)
            feats = extractor.extract(audio, transcript=utt.transcript, extras=extras)
        out.append(_compact(feats, inputs))
    if faceless:
        warnings.warn(f"{len(faceless)} videos had no detectable face and were used without faces "
                      f"(e.g. {faceless[:3]})", stacklevel=2)
    return out


def _compact(feats: Features, inputs: tuple[str, ...] = ("speech", "text")) -> Features:
    empty = np.zeros((0, 0, 0), np.float16)
    return Features(
        key=feats.key,
        audio=feats.audio.astype(np.float32) if "audio" in inputs else np.zeros(0, np.float32),
        words=feats.words,
        speech=feats.speech.astype(np.float16) if "speech" in inputs else empty,
        frame_times=feats.frame_times,
        text=feats.text.astype(np.float16) if "text" in inputs else np.zeros((len(feats.words), 0), np.float16),
        transcript_source=feats.transcript_source,
        extra={k: feats.extra[k] for i in inputs for k in EXTRAS.get(i, ()) if k in feats.extra},
    )


def crop_features(feats: Features, max_seconds: float) -> Features:
    """The first ``max_seconds`` of an utterance (training caps long items, as the paper does)."""
    keep_frames = int((feats.frame_times < max_seconds).sum())
    words = [w for w in feats.words if w.start < max_seconds]
    if keep_frames == len(feats.frame_times) and len(words) == len(feats.words) and \
            len(feats.audio) <= max_seconds * 16000:
        return feats
    extra = dict(feats.extra)
    if "sec_times" in extra:
        keep = extra["sec_times"] < max_seconds
        extra["sec_levels"], extra["sec_times"] = extra["sec_levels"][:, keep], extra["sec_times"][keep]
    if "face_times" in extra:
        keep = extra["face_times"] < max_seconds
        for k in ("faces", "face_times", "face_boxes"):
            if k in extra:
                extra[k] = extra[k][keep]
    return Features(
        key=feats.key, audio=feats.audio[: int(max_seconds * 16000)], words=words,
        speech=feats.speech[:, :keep_frames] if feats.speech.ndim == 3 else feats.speech,
        frame_times=feats.frame_times[:keep_frames],
        text=feats.text[: len(words)], transcript_source=feats.transcript_source, extra=extra,
    )


# --- evaluation --------------------------------------------------------------------------------
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
        train_f = extract_all(fold.train, extractor, "train features", progress, model)
        val_f = extract_all(fold.val, extractor, "val features", progress, model)
        test_f = extract_all(fold.test, extractor, "test features", progress, model)
    if cfg.max_seconds:
        train_f = [crop_features(f, cfg.max_seconds) for f in train_f]
    feature_time = time.perf_counter() - t0
    index = {l: i for i, l in enumerate(labels)}
    y_train = torch.tensor([index[u.label] for u in fold.train])

    if cfg.init_from:
        _init_from(model, cfg.init_from, device, log)
    arch_params = list(model.arch_parameters()) if hasattr(model, "arch_parameters") else []
    arch_ids = {id(p) for p in arch_params}
    weight_params = [p for p in model.parameters() if id(p) not in arch_ids]
    if hyper["optimizer"] == "sgd":
        opt = torch.optim.SGD(weight_params, lr=hyper["lr"], momentum=hyper["momentum"],
                              weight_decay=hyper["weight_decay"])
    else:
        opt = torch.optim.AdamW(weight_params, lr=hyper["lr"], weight_decay=hyper["weight_decay"])
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

    n = len(train_f)
    bs = hyper["batch_size"]
    n_batches = (n + bs - 1) // bs
    emit({"event": "start", "epochs": hyper["epochs"], "batches": n_batches, "history": history,
          "labels": labels})
    while pos["epoch"] < hyper["epochs"]:
        epoch = pos["epoch"]
        trained.train()
        t_epoch = time.perf_counter()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        batches = range(pos["batch"], n_batches)
        for b in tqdm(batches, desc=f"epoch {epoch + 1}", disable=not progress, leave=False):
            if should_stop is not None and should_stop():
                save_state()
                raise Stopped(f"stopped at epoch {epoch + 1}, batch {b}")
            idx = order[b * bs : (b + 1) * bs].tolist()
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
            val = score(labels, [u.label for u in fold.val], val_probs)
            row.update({"val_wa": val["wa"], "val_ua": val["ua"], "val_macro_f1": val["macro_f1"]})
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
            lambda: score(labels, [u.label for u in fold.val], predict(best_model, val_f, device))["ua"])
        best_meta["config"] = best_model.config.to_dict()
        best_meta["chosen_on_validation"] = chosen
        log(json.dumps({"chosen_on_validation": chosen}))
    test_probs = predict(best_model, test_f, device)
    test = score(labels, [u.label for u in fold.test], test_probs)
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


def evaluate(checkpoint: str, corpus: str, root: str, protocol: str = "predefined", fold: int = 0,
             split: str = "test", device: str | None = None, progress: bool = True,
             keep_ratio: float | None = None, top_p: float | None = None,
             on_progress=None) -> dict[str, Any]:
    """Score a checkpoint on a corpus fold: WA, UA, macro-F1, per-class table, confusion matrix,
    predictions. ``on_progress(stage, done, total)`` reports feature extraction and scoring."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = load_checkpoint(checkpoint, device=dev)
    labels = list(meta["config"]["labels"])
    folds = list(_folds(protocol, load_corpus(corpus, root), 0))
    if not folds:
        raise InputError(f"Protocol {protocol!r} gave no folds for this corpus.")
    if not 0 <= fold < len(folds):
        raise InputError(f"Fold {fold} does not exist: protocol {protocol!r} gives {len(folds)} folds.")
    utts = [u for u in getattr(folds[fold], split) if u.label in labels]
    if not utts:
        raise InputError(f"The {split} part of fold {folds[fold].name!r} has no utterance with a label "
                         f"this model knows ({', '.join(labels)}).")
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
    result["confusion_matrix"] = metrics.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    result["per_class"] = metrics.classification_report_table(y_true, y_pred, labels=labels)
    result["predictions"] = [
        {"id": u.id, "true": t, "pred": p, "confidence": float(pr.max()), "audio": str(u.audio),
         "transcript": u.transcript, "video": None if u.video is None else str(u.video)}
        for u, t, p, pr in zip(utts, y_true, y_pred, probs)
    ]
    return result


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
    p.add_argument("--corpus", default="manifest", help="iemocap | ravdess | cremad | meld | manifest")
    p.add_argument("--root", default=None, help="corpus folder or manifest CSV (default: the demo corpus)")
    p.add_argument("--protocol", default="predefined", help="predefined | loso | lospk | random")
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
    e.add_argument("--corpus", default="manifest")
    e.add_argument("--root", default=None)
    e.add_argument("--protocol", default="predefined")
    e.add_argument("--fold", type=int, default=0)
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--keep-ratio", type=float)
    e.add_argument("--top-p", type=float)
    e.add_argument("--device")
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


def _train_cli(args: argparse.Namespace) -> int:
    cfg = TrainConfig(
        model=args.model, corpus=args.corpus, root=_default_root(args), protocol=args.protocol,
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
    result = evaluate(args.checkpoint, args.corpus, _default_root(args), args.protocol, args.fold,
                      args.split, args.device, keep_ratio=args.keep_ratio, top_p=args.top_p)
    print(json.dumps({k: v for k, v in result.items() if k != "predictions"}, indent=2))
    return 0
