"""TESS, the Toronto Emotional Speech Set (Dupuis & Pichora-Fuller, 2010) loader.

Layout as distributed (``root`` is the folder holding the emotion folders, or any folder above
it, e.g. the one holding ``TESS Toronto emotional speech set data``)::

    OAF_angry/OAF_back_angry.wav
    OAF_Pleasant_surprise/OAF_bath_ps.wav        (folder and file spellings vary in case)
    YAF_neutral/YAF_youth_neutral.wav
    ...

Two speakers, OAF (aged 64) and YAF (aged 26), both women, say "Say the word <word>" for about 200
target words in seven emotions: angry, disgust, fear, happy, neutral, pleasant surprise, sad. The
label is read from the file name's last field (``ps`` and ``pleasant_surprise`` mean surprise);
the folder name is the fallback. ``speaker`` and ``session`` are both the speaker code.

Licence: CC BY-NC-ND 4.0 (research use; no modified copies may be distributed). Cite: Dupuis K.,
Pichora-Fuller M. K. (2010), Toronto Emotional Speech Set (TESS), University of Toronto.
"""

from __future__ import annotations

import re
from pathlib import Path

from ser_core.data.base import Utterance, is_hidden, require_some, resolve_dir, warn_skipped

EMOTIONS: dict[str, str] = {
    "angry": "ang",
    "anger": "ang",
    "disgust": "dis",
    "fear": "fea",
    "fearful": "fea",
    "happy": "hap",
    "neutral": "neu",
    "ps": "sur",
    "pleasant_surprise": "sur",
    "pleasant_surprised": "sur",
    "surprise": "sur",
    "sad": "sad",
}
SPEAKERS: dict[str, str] = {"OAF": "aged 64", "YAF": "aged 26"}

LAYOUT = (
    "expected the TESS layout: folders like OAF_angry/ and YAF_Pleasant_surprise/ holding files "
    "named like OAF_back_angry.wav (speaker_word_emotion)"
)

_NAME = re.compile(r"^(?P<speaker>[OY]AF)_(?P<word>[A-Za-z']+)_(?P<emotion>[A-Za-z_]+)$", re.IGNORECASE)


def _emotion(text: str) -> str | None:
    return EMOTIONS.get(text.strip().lower())


def load(root: str | Path) -> list[Utterance]:
    """Load every TESS recording under ``root`` (searched recursively for ``*.wav``)."""
    base = resolve_dir(root, "TESS")
    utterances, skipped = [], []
    for path in sorted(base.rglob("*")):
        if is_hidden(path) or path.suffix.lower() != ".wav" or not path.is_file():
            continue
        match = _NAME.match(path.stem)
        if match is None:
            skipped.append(path.name)
            continue
        folder = path.parent.name.split("_", 1)
        label = _emotion(match["emotion"]) or (_emotion(folder[1]) if len(folder) == 2 else None)
        if label is None:
            skipped.append(path.name)
            continue
        speaker = match["speaker"].upper()
        word = match["word"].lower()
        utterances.append(
            Utterance(
                id=f"{speaker}_{word}_{label}",
                audio=path,
                transcript=f"Say the word {word}",
                label=label,
                speaker=speaker,
                session=speaker,
                meta={"word": word, "speaker_age": SPEAKERS[speaker], "gender": "female"},
            )
        )
    warn_skipped("TESS", "name not speaker_word_emotion.wav", skipped)
    # the corpus has a few duplicate recordings under one name in different folders: keep the first
    seen, unique = set(), []
    for utt in utterances:
        if utt.id not in seen:
            seen.add(utt.id)
            unique.append(utt)
    return require_some(unique, "TESS", base, LAYOUT[0].upper() + LAYOUT[1:] + ".")
