"""Corpus loaders, the Utterance record and evaluation protocols.

``load_corpus("iemocap", root, classes=4)`` (or ``ser_core.data.iemocap.load(root)``) returns a list
of :class:`Utterance`; :mod:`ser_core.data.protocols` turns it into train/val/test folds.
Each loader module's docstring documents the folder layout it expects.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from ser_core.data import cremad, iemocap, manifest, meld, ravdess, savee, tess
from ser_core.data.base import LABEL_NAMES, LABELS, Utterance, label_counts
from ser_core.data.protocols import (
    PROTOCOLS,
    Fold,
    leave_one_session_out,
    leave_one_speaker_out,
    predefined_split,
    stratified_split,
)
from ser_core.errors import InputError

_LOADERS = {
    "iemocap": iemocap.load,
    "ravdess": ravdess.load,
    "cremad": cremad.load,
    "meld": meld.load,
    "tess": tess.load,
    "savee": savee.load,
    "manifest": manifest.load,
}

#: Names :func:`load_corpus` accepts.
CORPORA: tuple[str, ...] = tuple(_LOADERS)


def load_corpus(name: str, root: str | Path, **kw) -> list[Utterance]:
    """Load corpus ``name`` (one of CORPORA; "CREMA-D"-style spellings accepted) from ``root``."""
    key = str(name).strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    if key not in _LOADERS:
        raise InputError(f"Unknown corpus {name!r}; choose one of {', '.join(CORPORA)}.")
    loader = _LOADERS[key]
    options = [p for p in inspect.signature(loader).parameters if p != "root"]
    unknown = sorted(set(kw) - set(options))
    if unknown:
        raise InputError(
            f"{name}: unknown option(s) {', '.join(unknown)}; it takes {', '.join(options) or 'none'}."
        )
    return loader(root, **kw)


__all__ = [
    "CORPORA",
    "LABELS",
    "LABEL_NAMES",
    "PROTOCOLS",
    "Fold",
    "InputError",
    "Utterance",
    "label_counts",
    "leave_one_session_out",
    "leave_one_speaker_out",
    "load_corpus",
    "predefined_split",
    "stratified_split",
]
