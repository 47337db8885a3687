"""SAVEE, the Surrey Audio-Visual Expressed Emotion database (Haq & Jackson, 2009) loader.

Two layouts are read (``root`` is the folder holding them, or any folder above it)::

    AudioData/DC/a01.wav        as distributed: one folder per speaker (DC, JE, JK, KL) holding
    AudioData/JE/sa03.wav       files named <emotion code><two digits>.wav
    AudioData/KL/n30.wav

    ALL/DC_a01.wav              flat, as in the Kaggle copy: <speaker>_<emotion code><two digits>.wav
    ALL/JK_su15.wav             (directly in ``root`` or in a sub-folder)

Emotion codes: a anger, d disgust, f fear, h happiness, n neutral, sa sadness, su surprise (``sa``
and ``su`` are two letters; the longer code is tried first). Four male speakers (postgraduate
students at the University of Surrey) each read 15 sentences per emotion and 30 in neutral:
480 utterances. The sentences are not in the file names, so ``transcript`` is None. The id is
``<speaker>_<code><number>`` (e.g. ``DC_a01``) in both layouts; ``speaker`` and ``session`` are
both the speaker code. Files that match neither layout are skipped with a warning; a recording
found twice (both layouts unpacked under one root) is kept once.

Licence: free for research use (see the SAVEE website). Cite: Haq S., Jackson P. J. B. (2009),
Speaker-dependent audio-visual emotion recognition, Proc. AVSP 2009, pp. 53-58.
"""

from __future__ import annotations

import re
from pathlib import Path

from ser_core.data.base import Utterance, is_hidden, require_some, resolve_dir, warn_skipped

#: Emotion codes, longest first (``sa``/``su`` before the one-letter codes).
EMOTIONS: dict[str, str] = {
    "sa": "sad",
    "su": "sur",
    "a": "ang",
    "d": "dis",
    "f": "fea",
    "h": "hap",
    "n": "neu",
}
SPEAKERS: tuple[str, ...] = ("DC", "JE", "JK", "KL")

LAYOUT = (
    "expected the SAVEE layout: speaker folders DC, JE, JK, KL holding files named like a01.wav "
    "or sa03.wav (emotion code and number), or flat files named like DC_a01.wav"
)

_CODES = "|".join(sorted(EMOTIONS, key=len, reverse=True))
_SPEAKERS = "|".join(SPEAKERS)
_NESTED = re.compile(rf"^(?P<emotion>{_CODES})(?P<number>\d\d)$", re.IGNORECASE)
_FLAT = re.compile(rf"^(?P<speaker>{_SPEAKERS})_(?P<emotion>{_CODES})(?P<number>\d\d)$", re.IGNORECASE)


def _parse(path: Path) -> tuple[str, str, str] | None:
    """(speaker, emotion code, number) for a SAVEE file name, in either layout, or None."""
    match = _FLAT.match(path.stem)
    if match is not None:
        return match["speaker"].upper(), match["emotion"].lower(), match["number"]
    match = _NESTED.match(path.stem)
    if match is not None and path.parent.name.upper() in SPEAKERS:
        return path.parent.name.upper(), match["emotion"].lower(), match["number"]
    return None


def load(root: str | Path) -> list[Utterance]:
    """Load every SAVEE recording under ``root`` (searched recursively for ``*.wav``)."""
    base = resolve_dir(root, "SAVEE")
    utterances: list[Utterance] = []
    skipped: list[str] = []
    duplicates: list[str] = []
    seen: set[str] = set()
    for path in sorted(base.rglob("*")):
        if is_hidden(path) or path.suffix.lower() != ".wav" or not path.is_file():
            continue
        if any(part.startswith(".") for part in path.relative_to(base).parts[:-1]):
            continue  # inside a hidden folder (e.g. an archive's metadata)
        parsed = _parse(path)
        if parsed is None:
            skipped.append(str(path.relative_to(base)))
            continue
        speaker, code, number = parsed
        utt_id = f"{speaker}_{code}{number}"
        if utt_id in seen:
            duplicates.append(str(path.relative_to(base)))
            continue
        seen.add(utt_id)
        utterances.append(
            Utterance(
                id=utt_id,
                audio=path,
                transcript=None,
                label=EMOTIONS[code],
                speaker=speaker,
                session=speaker,
                meta={"emotion_code": code, "number": int(number), "gender": "male"},
            )
        )
    warn_skipped("SAVEE", "name not <speaker>/<code><nn>.wav or <speaker>_<code><nn>.wav", skipped)
    warn_skipped("SAVEE", "same recording already found under another name", duplicates)
    return require_some(utterances, "SAVEE", base, LAYOUT[0].upper() + LAYOUT[1:] + ".")
