"""Evaluation protocols: how a corpus's utterances are split into train / val / test.

Every protocol returns a list of :class:`Fold`. The validation part is always carved out of the
fold's training part (stratified by label; optionally whole speakers held out), never out of the
test part, so model selection never sees test data. Splits use scikit-learn's splitters and are
deterministic for a given ``seed``; inside each part the utterances keep their input order.

- :func:`leave_one_session_out` — IEMOCAP's usual 5-fold protocol (test = one session).
- :func:`leave_one_speaker_out` — RAVDESS / CREMA-D speaker-independent protocol.
- :func:`stratified_split` — one random hold-out split, stratified by label.
- :func:`predefined_split` — the corpus's own train/dev/test split (MELD, the demo corpus).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ser_core.data.base import Utterance
from ser_core.errors import InputError

_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "dev": "val",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


@dataclass(frozen=True)
class Fold:
    """One train / val / test partition; ``name`` says what was held out for test."""

    name: str
    train: tuple[Utterance, ...]
    val: tuple[Utterance, ...]
    test: tuple[Utterance, ...]


def _check(utts: Sequence[Utterance], what: str) -> list[Utterance]:
    utts = list(utts)
    if not utts:
        raise InputError(f"{what}: no utterances to split.")
    ids = [u.id for u in utts]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise InputError(f"{what}: utterance ids repeat ({', '.join(repeated)}); ids must be unique.")
    return utts


def _check_size(size: float, name: str, allow_zero: bool) -> None:
    numeric = isinstance(size, (int, float)) and not isinstance(size, bool)
    low_ok = numeric and (size >= 0 if allow_zero else size > 0)
    if not (low_ok and size < 1):
        bound = "0 <=" if allow_zero else "0 <"
        raise InputError(f"{name} must be a fraction with {bound} {name} < 1, not {size!r}.")


def hold_out(
    utts: Sequence[Utterance], size: float, seed: int = 0, group_by_speaker: bool = False
) -> tuple[tuple[Utterance, ...], tuple[Utterance, ...]]:
    """Split ``utts`` into (rest, held_out) with about ``size`` of them held out, stratified by label.

    With ``group_by_speaker`` whole speakers are held out (StratifiedGroupKFold, taking one of
    ``round(1/size)`` folds, at most one per speaker); otherwise StratifiedShuffleSplit, falling
    back (with a warning) to an unstratified ShuffleSplit when some label is too rare to stratify.
    """
    from sklearn.model_selection import ShuffleSplit, StratifiedGroupKFold, StratifiedShuffleSplit

    utts = list(utts)
    if size == 0:
        return tuple(utts), ()
    if len(utts) < 2:
        raise InputError(f"Cannot hold out {size:.0%} of {len(utts)} utterance(s): need at least 2.")
    y = np.array([u.label for u in utts])
    x = np.zeros((len(utts), 1))
    if group_by_speaker:
        groups = np.array([u.speaker for u in utts])
        n_groups = len(np.unique(groups))
        if n_groups < 2:
            raise InputError(
                "Cannot hold out whole speakers: the part to split has only one speaker "
                f"({groups[0]!r})."
            )
        n_splits = max(2, min(round(1 / size), n_groups))
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class")
            rest_idx, held_idx = next(splitter.split(x, y, groups))
    else:
        try:
            splitter = StratifiedShuffleSplit(n_splits=1, test_size=size, random_state=seed)
            rest_idx, held_idx = next(splitter.split(x, y))
        except ValueError as exc:
            warnings.warn(
                f"Could not stratify a {size:.0%} hold-out by label ({exc}); splitting without "
                "stratification.",
                UserWarning,
                stacklevel=2,
            )
            splitter = ShuffleSplit(n_splits=1, test_size=size, random_state=seed)
            rest_idx, held_idx = next(splitter.split(x))
    return tuple(utts[i] for i in sorted(rest_idx)), tuple(utts[i] for i in sorted(held_idx))


def _leave_one_group_out(
    utts: Sequence[Utterance],
    key: str,
    what: str,
    val_size: float,
    seed: int,
    group_val_by_speaker: bool,
) -> list[Fold]:
    from sklearn.model_selection import LeaveOneGroupOut

    utts = _check(utts, what)
    _check_size(val_size, "val_size", allow_zero=True)
    groups = np.array([getattr(u, key) for u in utts])
    if any(g == "" for g in groups):
        raise InputError(f"{what}: some utterances have no {key}; this protocol needs one for each.")
    if len(np.unique(groups)) < 2:
        raise InputError(f"{what}: all utterances share the {key} {groups[0]!r}; need at least two.")
    folds = []
    for train_idx, test_idx in LeaveOneGroupOut().split(np.zeros((len(utts), 1)), groups=groups):
        train_part = [utts[i] for i in train_idx]
        train, val = hold_out(train_part, val_size, seed, group_val_by_speaker)
        folds.append(Fold(str(groups[test_idx[0]]), train, val, tuple(utts[i] for i in test_idx)))
    return folds


def leave_one_session_out(
    utts: Sequence[Utterance], val_size: float = 0.1, seed: int = 0, group_val_by_speaker: bool = False
) -> list[Fold]:
    """One fold per session: test = that session, val = ``val_size`` of the other sessions."""
    return _leave_one_group_out(utts, "session", "Leave-one-session-out", val_size, seed, group_val_by_speaker)


def leave_one_speaker_out(
    utts: Sequence[Utterance], val_size: float = 0.1, seed: int = 0, group_val_by_speaker: bool = False
) -> list[Fold]:
    """One fold per speaker: test = that speaker, val = ``val_size`` of the other speakers' utterances."""
    return _leave_one_group_out(utts, "speaker", "Leave-one-speaker-out", val_size, seed, group_val_by_speaker)


def stratified_split(
    utts: Sequence[Utterance],
    test_size: float = 0.2,
    seed: int = 0,
    val_size: float = 0.1,
    group_by_speaker: bool = False,
) -> list[Fold]:
    """One fold: ``test_size`` held out for test, then ``val_size`` of the rest for val (by label).

    ``group_by_speaker`` holds out whole speakers for both test and val (speaker-independent).
    """
    utts = _check(utts, "Stratified split")
    _check_size(test_size, "test_size", allow_zero=False)
    _check_size(val_size, "val_size", allow_zero=True)
    train_part, test = hold_out(utts, test_size, seed, group_by_speaker)
    train, val = hold_out(train_part, val_size, seed, group_by_speaker)
    return [Fold(f"stratified-{seed}", train, val, test)]


def split_of(utt: Utterance) -> str:
    """The predefined part of ``utt``: train, val or test (from meta["split"], else its session)."""
    raw = str(utt.meta.get("split") or utt.session).strip().lower()
    part = _SPLIT_NAMES.get(raw)
    if part is None:
        raise InputError(
            f"Predefined split: utterance {utt.id} is in split {raw!r}; expected train, dev/val or test "
            "(in meta['split'] or as its session)."
        )
    return part


def predefined_split(utts: Sequence[Utterance], val_size: float = 0.1, seed: int = 0) -> list[Fold]:
    """One fold from the corpus's own split; with no dev/val part, val is carved from train."""
    utts = _check(utts, "Predefined split")
    _check_size(val_size, "val_size", allow_zero=True)
    parts: dict[str, list[Utterance]] = {"train": [], "val": [], "test": []}
    for utt in utts:
        parts[split_of(utt)].append(utt)
    if not parts["train"] or not parts["test"]:
        empty = [p for p in ("train", "test") if not parts[p]]
        raise InputError(f"Predefined split: no utterances in the {' and '.join(empty)} part.")
    if parts["val"]:
        train, val = tuple(parts["train"]), tuple(parts["val"])
    else:
        train, val = hold_out(parts["train"], val_size, seed)
    return [Fold("predefined", train, val, tuple(parts["test"]))]


PROTOCOLS = {
    "leave_one_session_out": leave_one_session_out,
    "leave_one_speaker_out": leave_one_speaker_out,
    "stratified_split": stratified_split,
    "predefined_split": predefined_split,
}
