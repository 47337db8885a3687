"""Several corpora in one run: one label set, a speaker-independent split per corpus, balance.

    python -m ser_core train --corpus ravdess --root A --corpus tess --root B --corpus demo ...

Each corpus is split on its own, so that the voices in a corpus's test part are never heard in
training (the ``speakers`` protocol below):

* a corpus with its own split (the demo corpus, MELD, a manifest with a split column) keeps it;
* a corpus with three or more speakers holds out whole speakers: about 20 % of them for test,
  then about 15 % of the rest for validation (scikit-learn's StratifiedGroupKFold, by label);
* a corpus with two speakers (TESS) tests on one of them and validates on a stratified 15 % of the
  other's utterances (there is no third voice to hold out).

For a validation that can rank runs, the non-test speakers of a corpus with three or more speakers
can instead be cut into N folds (``val_fold="K/N"``: fold K validates, the rest train; run every K
and average, :mod:`ser_core.cross_validation`), or all trained on (``val_fold="none"``: the final
refit, at an epoch the folds chose). The test speakers are the same whichever fold is asked for; the
two-speaker and pre-split corpora keep their usual validation part.

The split is drawn with its own seed (``split_seed``, 0 unless a run asks for another), never
the training seed: a second training seed must change the initialisation and the order of the
items, not which voices are held out. (Until 2026-12-04 the training seed drew the split, so a run
with ``--seed 1`` fine-tuned from a seed-0 model was tested on voices that model had trained on;
:func:`split_seed_of` reads such older checkpoints as they were split.)

Labels are mapped onto one set (``DEFAULT_CLASSES``: anger, happiness, neutral, sadness); the
utterances with other labels are left out. A corpus named ``test:NAME`` goes to the test part
whole: that is a cross-corpus run (train without it, score on every one of its utterances).

Ids get the corpus's name in front (``tess/OAF_back_ang``) and ``meta["corpus"]`` says where an
utterance came from, which the trainer uses to report every figure per corpus and to balance
(:func:`balance_weights`): each corpus gets the same share of an epoch and, inside a corpus, each
class the same share, so 400 real clips are not drowned by 1 400 synthetic ones.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ser_core.data import protocols
from ser_core.data.base import Utterance
from ser_core.errors import InputError

DEFAULT_CLASSES: tuple[str, ...] = ("ang", "hap", "neu", "sad")
#: corpora that need no --root (they live in the project's cache): the demo corpus and its calm-voice
#: companion set (``python -m ser_core corpus --words-decide``, where the words decide the label)
ROOTLESS = ("demo", "demo-calm")
#: the generated (synthetic) corpora: every other corpus is real voices
SYNTHETIC = ROOTLESS


#: the seed of the speaker split every shipped model and every run uses unless told otherwise
SPLIT_SEED = 0
#: the share of a corpus's non-test speakers (two-speaker corpora: of the training voice's clips)
#: held out for validation, unless a run asks for another (``--val-share``)
VAL_SHARE = 0.15


def split_seed_of(training: dict) -> int:
    """The seed that drew a checkpoint's speaker split, from its meta's ``training``: its
    ``split_seed``; a checkpoint written before the split had its own seed was split by its
    training ``seed``."""
    return int(training.get("split_seed", training.get("seed", SPLIT_SEED)))


def split_of(training: dict) -> dict:
    """:func:`speaker_split`'s settings for a checkpoint's meta ``training``: its split seed, its
    validation share and its validation fold (None: the usual hold-out)."""
    return {"seed": split_seed_of(training), "val_size": float(training.get("val_share") or VAL_SHARE),
            "val_fold": training.get("val_fold")}


def parse_val_fold(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` → (K, N), 1 ≤ K ≤ N, N ≥ 2; ``"none"`` → (0, 0): no validation speakers; None → None."""
    if text is None:
        return None
    if str(text).strip().lower() == "none":
        return 0, 0
    k, sep, n = str(text).partition("/")
    try:
        k_, n_ = int(k), int(n)
    except ValueError:
        k_ = n_ = -1
    if not sep or not (n_ >= 2 and 1 <= k_ <= n_):
        raise InputError(f"Validation fold {text!r}: give K/N with 1 ≤ K ≤ N and N ≥ 2 (e.g. 1/4), "
                         "or none.")
    return k_, n_


def speaker_fold(utts: Sequence[Utterance], val_fold: str, seed: int = 0) -> tuple[tuple, tuple]:
    """(train, val) of the non-test utterances ``utts``: whole speakers cut into N folds by
    scikit-learn's StratifiedGroupKFold (by label, seeded), fold K validating; ``"none"``: (all, ())."""
    from sklearn.model_selection import StratifiedGroupKFold

    k, n = parse_val_fold(val_fold)
    utts = list(utts)
    if n == 0:
        return tuple(utts), ()
    groups = np.array([u.speaker for u in utts])
    if len(np.unique(groups)) < n:
        raise InputError(f"Validation fold {val_fold}: {len(np.unique(groups))} speakers cannot make {n} "
                         "folds.")
    splitter = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    y = np.array([u.label for u in utts])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        _, val_idx = list(splitter.split(np.zeros((len(utts), 1)), y, groups))[k - 1]
    held = set(val_idx.tolist())
    return (tuple(u for i, u in enumerate(utts) if i not in held),
            tuple(u for i, u in enumerate(utts) if i in held))


@dataclass(frozen=True)
class CorpusSpec:
    """One corpus of a mix: its loader name, its folder, and whether it is only for testing."""

    name: str
    root: str
    test_only: bool = False

    @property
    def label(self) -> str:
        return ("test:" if self.test_only else "") + self.name

    def describe(self) -> str:
        return f"{self.name} ({'test only' if self.test_only else 'train/val/test'})"


def corpus_specs(corpora: Sequence[str], roots: Sequence[str | None]) -> list[CorpusSpec]:
    """Pair ``--corpus`` names with ``--root`` folders in order; ``demo`` takes no root.

    ``test:NAME`` marks a corpus used for testing only (a cross-corpus run).
    """
    roots = [r for r in roots if r]
    specs, i = [], 0
    for raw in corpora:
        name = str(raw).strip().lower()
        test_only = name.startswith("test:")
        name = name.split(":", 1)[1] if test_only else name
        if name in ROOTLESS:
            root = demo_manifest(name)
        else:
            if i >= len(roots):
                raise InputError(f"The corpus {name} needs a folder: give one --root for each corpus "
                                 "other than the demo corpus, in the same order.")
            root, i = roots[i], i + 1
        specs.append(CorpusSpec(name, str(root), test_only))
    if i < len(roots):
        raise InputError(f"{len(roots) - i} --root folder(s) have no --corpus to go with them.")
    if not any(not s.test_only for s in specs):
        raise InputError("Every corpus is marked test-only: at least one must be trained on.")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InputError("A corpus is named twice in the mix.")
    return specs


def generated_folder(name: str = "demo") -> Path:
    """Where the generated demo corpus (or, ``demo-calm``, its calm-voice set) lives."""
    from ser_core.paths import calm_corpus_dir, default_corpus_dir

    return default_corpus_dir() if name == "demo" else calm_corpus_dir()


def demo_manifest(name: str = "demo") -> Path:
    """The manifest of the generated demo corpus (or, ``demo-calm``, of its calm-voice set)."""
    folder, missing = generated_folder(name), {
        "demo": ("The demo corpus has not been generated yet: run `python -m ser_core corpus` (or press "
                 "Generate on the Train page) first."),
        "demo-calm": ("The calm-voice set has not been generated yet: press Generate calm-voice set on the "
                      "Train page, or run `python -m ser_core corpus --words-decide --n 800`."),
    }[name]
    manifest = folder / "manifest.csv"
    if not manifest.exists():
        raise InputError(missing)
    return manifest


def load_spec(spec: CorpusSpec) -> list[Utterance]:
    from ser_core.data import load_corpus

    return load_corpus("manifest" if spec.name in ROOTLESS else spec.name, spec.root)


def speaker_split(utts: Sequence[Utterance], seed: int = 0, test_size: float = 0.2,
                  val_size: float = VAL_SHARE, val_fold: str | None = None) -> protocols.Fold:
    """The ``speakers`` protocol: test voices never heard in training (see the module docstring);
    ``val_fold`` ("K/N" or "none") chooses the validation speakers of a corpus with three or more."""
    utts = list(utts)
    if not utts:
        raise InputError("No utterances to split.")
    if all(_has_split(u) for u in utts):
        return protocols.predefined_split(utts, seed=seed)[0]
    speakers = sorted({u.speaker for u in utts})
    if len(speakers) >= 3:
        rest, test = protocols.hold_out(utts, test_size, seed, group_by_speaker=True)
        if val_fold is not None:
            train, val = speaker_fold(rest, val_fold, seed)
            return protocols.Fold(f"speakers-{seed}-val-{str(val_fold).replace('/', 'of')}", train, val, test)
        train, val = protocols.hold_out(rest, val_size, seed, group_by_speaker=True)
        return protocols.Fold(f"speakers-{seed}", train, val, test)
    if len(speakers) == 2:
        held = speakers[seed % 2]
        rest = [u for u in utts if u.speaker != held]
        train, val = protocols.hold_out(rest, val_size, seed)
        return protocols.Fold(f"speaker-{held}", train, val, tuple(u for u in utts if u.speaker == held))
    raise InputError(f"Only one speaker ({speakers[0]}): a speaker-independent split needs two or more.")


def _has_split(utt: Utterance) -> bool:
    try:
        protocols.split_of(utt)
        return True
    except InputError:
        return False


def tag(utt: Utterance, corpus: str) -> Utterance:
    """``utt`` with its corpus in front of the id and in ``meta["corpus"]``."""
    return dataclasses.replace(utt, id=f"{corpus}/{utt.id}", meta={**utt.meta, "corpus": corpus})


def mixed_fold(specs: Sequence[CorpusSpec], classes: Sequence[str] = DEFAULT_CLASSES,
               seed: int = 0, val_size: float = VAL_SHARE, val_fold: str | None = None) -> protocols.Fold:
    """One fold over every corpus of the mix (each split on its own, then joined)."""
    keep = set(classes)
    parts: dict[str, list[Utterance]] = {"train": [], "val": [], "test": []}
    for spec in specs:
        utts = [tag(u, spec.name) for u in load_spec(spec) if u.label in keep]
        if not utts:
            raise InputError(f"{spec.name}: no utterance has one of the labels {', '.join(classes)}.")
        if spec.test_only:
            parts["test"] += utts
            continue
        fold = speaker_split(utts, seed, val_size=val_size, val_fold=val_fold)
        for part in parts:
            parts[part] += getattr(fold, part)
    name = "+".join(s.label for s in specs)
    return protocols.Fold(name, tuple(parts["train"]), tuple(parts["val"]), tuple(parts["test"]))


def corpus_of(utt: Utterance) -> str:
    return str(utt.meta.get("corpus", "corpus"))


def balance_weights(utts: Sequence[Utterance], shares: dict[str, float] | None = None) -> np.ndarray:
    """Sampling weights that give every corpus the same share (or the relative ``shares`` given,
    e.g. {"ravdess": 2}: twice the others; a corpus not named counts 1) and, inside it, every
    class the same share."""
    cells: dict[tuple[str, str], int] = {}
    for u in utts:
        cells[(corpus_of(u), u.label)] = cells.get((corpus_of(u), u.label), 0) + 1
    corpora = {c for c, _ in cells}
    unknown = sorted(set(shares or {}) - corpora)
    if unknown:
        raise InputError(f"No training data from {', '.join(unknown)} to give a share to; "
                         f"the corpora trained on are {', '.join(sorted(corpora))}.")
    share = {c: float((shares or {}).get(c, 1.0)) for c in corpora}
    if any(not v > 0 for v in share.values()):
        raise InputError("Every corpus share must be above 0.")
    classes_in = {c: sum(1 for cc, _ in cells if cc == c) for c in corpora}
    w = np.array([share[corpus_of(u)] / (classes_in[corpus_of(u)] * cells[(corpus_of(u), u.label)])
                  for u in utts])
    return w / w.sum()
