"""What the trainer feeds a model: a corpus fold, waveforms (augmented copies included), cached
features, cropped to the training length.

    load_fold(cfg) → Fold(train, val, test)      one corpus and its protocol, or a mix (data/mix.py)
    with_augmented_copies(train, n, seed)        + n augmented copies per utterance (augment.py)
    extract_all(utts, extractor, model=…)       → Features, disk-cached, compacted to what the model reads
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import warnings
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch
from tqdm import tqdm

from .audio import load_audio
from .data import load_corpus, protocols
from .data.base import Utterance
from .data.mix import (ROOTLESS, DEFAULT_CLASSES, VAL_SHARE, CorpusSpec, corpus_of, mixed_fold, speaker_split,
                       split_of)
from .errors import InputError
from .features import EXTRAS, FeatureExtractor, Features
from .models.base import feature_extras, model_inputs

if TYPE_CHECKING:
    from .train import TrainConfig

def load_fold(cfg: TrainConfig) -> protocols.Fold:
    if cfg.mix:
        return mixed_fold([CorpusSpec(**spec) for spec in cfg.mix],
                          tuple(cfg.classes or DEFAULT_CLASSES), cfg.split_seed,
                          cfg.val_share, cfg.val_fold)
    utts = load_corpus(cfg.corpus, cfg.root)
    if cfg.max_utterances:
        rng = random.Random(cfg.split_seed)
        utts = list(utts)
        rng.shuffle(utts)
        utts = utts[: cfg.max_utterances]
    folds = list(_folds(cfg.protocol, utts, cfg.split_seed, cfg.val_share, cfg.val_fold))
    if not folds:
        raise InputError(f"protocol {cfg.protocol!r} gave no folds for this corpus")
    if cfg.fold >= len(folds):
        raise InputError(f"fold {cfg.fold} does not exist: protocol gives {len(folds)} folds")
    return folds[cfg.fold]


def _held_out_by(training: dict) -> dict[str, tuple]:
    """How a run (a TrainConfig as a dict, or a checkpoint meta's ``training``) held out the voices
    of each real corpus it read: ``{corpus: ("test only",)}`` for a corpus it only tested on, else
    the split that chose its test speakers. The generated corpora keep their own split."""
    seed, val, val_fold = split_of(training).values()
    if val_fold is not None:  # the folds of a cross-validation differ in their validation speakers
        val = (val, str(val_fold))
    if training.get("mix"):
        return {m["name"]: ("test only",) if m.get("test_only") else ("mix", seed, val)
                for m in training["mix"] if m["name"] not in ROOTLESS}
    corpus = training.get("corpus")
    if not corpus or corpus in ROOTLESS or corpus == "manifest":
        return {}
    protocol = training.get("protocol", "predefined")
    # a checkpoint's meta names its fold ("Session1"), a run numbers it: only numbers can be compared
    fold = training.get("fold", 0) if isinstance(training.get("fold", 0), int) else None
    return {corpus: ("test only",) if protocol == "all" else (protocol, seed, val, fold)}


def _same_split(a: tuple, b: tuple) -> bool:
    """Two ``_held_out_by`` entries that hold out the same voices (a fold known on one side only
    is taken as the same)."""
    if len(a) == len(b) == 4 and None in (a[3], b[3]):
        return a[:3] == b[:3]
    return a == b


def split_clash(cfg: TrainConfig, source_training: dict) -> str | None:
    """Why fine-tuning ``cfg.init_from`` (trained as ``source_training`` says) would test this run
    on voices the starting model was trained on, in words; None when it would not. That happens
    when the run splits a corpus the model trained on in another way (another split seed or
    protocol), or tests on the whole of it."""
    source = {c: how for c, how in _held_out_by(source_training).items() if how != ("test only",)}
    for corpus, how in _held_out_by(dataclasses.asdict(cfg)).items():
        if corpus not in source or _same_split(how, source[corpus]):
            continue
        if how == ("test only",):
            return (f"the checkpoint it starts from was trained on {corpus}, and this run tests on every "
                    f"{corpus} clip: its scores would count voices the model has heard. Start from a "
                    f"checkpoint that never trained on {corpus}")
        split = split_of(source_training)
        return (f"this run splits {corpus}'s speakers differently from the run that trained the checkpoint "
                f"it starts from, so some of its validation or test speakers were that model's training "
                f"speakers. Keep the checkpoint's split (split seed {split['seed']}, validation share "
                f"{split['val_size']:g}" + (f", validation fold {split['val_fold']}" if split["val_fold"] else "")
                + ")")
    return None


def _folds(protocol: str, utts: list[Utterance], seed: int,
           val_share: float = VAL_SHARE, val_fold: str | None = None) -> Iterable[protocols.Fold]:
    if protocol == "predefined":
        return protocols.predefined_split(utts)
    if protocol in ("loso", "leave-one-session-out"):
        return protocols.leave_one_session_out(utts)
    if protocol in ("lospk", "leave-one-speaker-out"):
        return protocols.leave_one_speaker_out(utts)
    if protocol in ("random", "stratified"):
        return protocols.stratified_split(utts, seed=seed)
    if protocol == "speakers":  # the per-corpus speaker-independent split a mix uses
        return [speaker_split(utts, seed, val_size=val_share, val_fold=val_fold)]
    if protocol == "all":  # every utterance is test data (a corpus never trained on)
        return [protocols.Fold("all", (), (), tuple(utts))]
    raise InputError(f"unknown protocol {protocol!r}")


def utterance_audio(utt: Utterance) -> np.ndarray:
    """The utterance's 16 kHz samples; an augmented copy (``meta["augment"]``) is augmented here,
    before the encoders, so its features are cached under their own content hash."""
    if utt.start is not None and utt.end is not None and utt.audio.suffix.lower() not in (".wav", ".flac"):
        from .audio import load_audio_segment

        audio = load_audio_segment(utt.audio, utt.start, utt.end)
    else:
        audio = load_audio(utt.audio)
    if "augment" in utt.meta:
        from .augment import augmented_as

        audio = augmented_as(audio, utt.meta["augment"])
    return audio


def copy_seed(seed: int, utterance_id: str, copy: int) -> int:
    """A stable 31-bit seed for one augmented copy (hashlib: Python's hash() changes per process)."""
    digest = hashlib.sha256(f"{seed}|{utterance_id}|{copy}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def without_conflicts(utts: Iterable[Utterance]) -> list[Utterance]:
    """``utts`` less those whose words say another emotion than their label (the demo corpus's
    ``conflict`` column, where the label follows the voice); corpora without it lose nothing."""
    return [u for u in utts if str(u.meta.get("conflict")).lower() != "true"]


def with_augmented_copies(utts: Iterable[Utterance], copies: int, seed: int,
                          corpora: list[str] | None = None, config: dict | None = None) -> list[Utterance]:
    """``utts`` followed by ``copies`` augmented copies of each (of the named corpora only), each
    seeded from (seed, utterance id, copy) so a rerun makes the same waveforms; ``config``: the
    AugmentConfig's ranges and probabilities (as ``to_dict``), None for its defaults."""
    utts = list(utts)
    extra = []
    for copy in range(copies):
        for utt in utts:
            if corpora is not None and corpus_of(utt) not in corpora:
                continue
            extra.append(dataclasses.replace(
                utt, id=f"{utt.id}#aug{copy}",
                meta={**utt.meta, "augment": {"seed": copy_seed(seed, utt.id, copy),
                                              **({"config": config} if config else {})}}))
    return utts + extra


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


def length_grouped_batches(order: list[int], lengths: list[int], batch_size: int,
                           generator: torch.Generator, group: int = 8) -> list[list[int]]:
    """Cut an epoch's drawn ``order`` into batches of similar length (less padding).

    The order is taken ``group`` batches at a time; inside each chunk the items are sorted by
    length and cut into batches, and the batches of the whole epoch are then shuffled with
    ``generator``. Every drawn item stays in the epoch exactly as often as it was drawn.
    """
    chunk = batch_size * group
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def drop_inputs(batch: dict, shares: dict[str, float], generator: torch.Generator) -> dict:
    """Modality dropout: for each input named in ``shares`` (e.g. {"audio": 0.3}), that share of
    the batch's items, drawn with ``generator``, get the input set to zeros, what padding and the
    attribution baseline look like to the models. With the audio gone the model must decide from
    the words alone, so its text side has to find the words that carry the emotion; nothing tells
    it where they are (the labels only). A new dict; the batch's tensors are not changed."""
    out = dict(batch)
    for key, share in shares.items():
        if not 0.0 <= share <= 1.0:
            raise InputError(f"The share of items whose {key} is dropped must be between 0 and 1; got {share}.")
        x = batch.get(key)
        if not isinstance(x, torch.Tensor):
            raise InputError(f"This model has no input {key!r} to drop (it has {', '.join(sorted(batch))}).")
        drop = torch.rand(x.shape[0], generator=generator) < share
        if bool(drop.any()):
            out[key] = x.masked_fill(drop.to(x.device).view(-1, *([1] * (x.dim() - 1))), 0.0)
    return out
