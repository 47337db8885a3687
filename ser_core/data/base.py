"""The utterance record every corpus loader returns, and helpers the loaders share.

Labels use short names (IEMOCAP's own codes, extended to the other corpora's emotions):
ang anger, hap happiness, exc excitement, sad sadness, neu neutral, fru frustration,
fea fear, dis disgust, sur surprise, cal calm.

``start``/``end`` are times in seconds inside the *source recording* the utterance was cut
from: for IEMOCAP the dialog (its whole-dialog ``video``; ``audio`` is already the cut wav),
for a manifest the file at ``path``. They are ``None`` when the files are the utterance itself
(RAVDESS, CREMA-D, MELD, whose episode times go to ``meta``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ser_core.errors import InputError

#: Every label a loader may return, in a fixed order (IEMOCAP's four first).
LABELS: tuple[str, ...] = ("ang", "hap", "exc", "sad", "neu", "fru", "fea", "dis", "sur", "cal")

#: Long names, for tables and axes.
LABEL_NAMES: dict[str, str] = {
    "ang": "anger",
    "hap": "happiness",
    "exc": "excitement",
    "sad": "sadness",
    "neu": "neutral",
    "fru": "frustration",
    "fea": "fear",
    "dis": "disgust",
    "sur": "surprise",
    "cal": "calm",
}

#: How a person says the emotion a voice carries ("it sounds angry"): what every page shows.
EMOTION_WORDS: dict[str, str] = {
    "ang": "angry", "hap": "happy", "exc": "excited", "sad": "sad", "neu": "neutral",
    "fru": "frustrated", "fea": "fearful", "dis": "disgusted", "sur": "surprised", "cal": "calm",
}


def emotion_word(label: str) -> str:
    """The word shown for ``label`` ("ang" → "angry"); an unknown label is shown as it is."""
    return EMOTION_WORDS.get(str(label), str(label))


#: Spellings a user's manifest may use for a label (lower-cased); the short names map to themselves.
LABEL_ALIASES: dict[str, str] = {
    **{short: short for short in LABELS},
    **{name: short for short, name in LABEL_NAMES.items()},
    "angry": "ang",
    "happy": "hap",
    "joy": "hap",
    "excited": "exc",
    "neutrality": "neu",
    "frustrated": "fru",
    "fearful": "fea",
    "disgusted": "dis",
    "surprised": "sur",
}


@dataclass(frozen=True)
class Utterance:
    """One labelled utterance of a corpus.

    ``meta`` holds extra per-utterance fields (e.g. IEMOCAP's valence/arousal/dominance, MELD's
    sentiment, a manifest's extra columns); it takes no part in equality or hashing.
    """

    id: str
    audio: Path
    transcript: str | None
    label: str
    speaker: str
    session: str
    start: float | None = None
    end: float | None = None
    video: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        # Accept str paths from callers; store Paths so comparisons and joins behave.
        if not isinstance(self.audio, Path):
            object.__setattr__(self, "audio", Path(self.audio))
        if self.video is not None and not isinstance(self.video, Path):
            object.__setattr__(self, "video", Path(self.video))


def normalize_label(value: str) -> str | None:
    """Short label for ``value`` (a short name, long name or common spelling), or None."""
    return LABEL_ALIASES.get(str(value).strip().lower())


def resolve_dir(root: str | Path, corpus: str) -> Path:
    """``root`` as an existing directory, or an InputError naming the corpus."""
    if root is None or str(root).strip() == "":
        raise InputError(f"No folder given for the {corpus} corpus.")
    path = Path(root).expanduser()
    if not path.exists():
        raise InputError(f"{corpus}: the folder {path} does not exist.")
    if not path.is_dir():
        raise InputError(f"{corpus}: {path} is a file; expected the corpus's top folder.")
    return path


def is_hidden(path: Path) -> bool:
    """True for dot-files and macOS AppleDouble files (``._name``) that archives often carry."""
    return path.name.startswith(".")


def read_text(path: Path) -> str:
    """A text file's contents: UTF-8, falling back to cp1252 (older corpus files are not UTF-8)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def warn_skipped(corpus: str, reason: str, skipped: list[str]) -> None:
    """Warn (do not fail) that the listed utterances ``skipped`` were left out, and why."""
    if not skipped:
        return
    shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    warnings.warn(
        f"{corpus}: skipped {len(skipped)} utterance(s): {reason} ({shown}).",
        UserWarning,
        stacklevel=3,
    )


def require_some(utterances: list[Utterance], corpus: str, root: Path, hint: str) -> list[Utterance]:
    """Return ``utterances`` unless empty, in which case raise an InputError with ``hint``."""
    if not utterances:
        raise InputError(f"{corpus}: no usable utterances found under {root}. {hint}")
    return utterances


def parse_json_like(value: Any) -> Any:
    """Parse a string that looks like JSON (a list or object); anything else is returned as is."""
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "[{" and text:
            try:
                return json.loads(text)
            except ValueError:
                return value
    return value


def label_counts(utterances: Iterable[Utterance]) -> dict[str, int]:
    """How many utterances carry each label, in LABELS order."""
    counts: dict[str, int] = {}
    for utt in utterances:
        counts[utt.label] = counts.get(utt.label, 0) + 1
    order = {label: i for i, label in enumerate(LABELS)}
    return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
