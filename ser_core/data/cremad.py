"""CREMA-D (Cao et al., 2014) loader.

Assumed layout (the CREMA-D repository; ``root`` is its top folder, or ``AudioWAV`` itself)::

    AudioWAV/1001_DFA_ANG_XX.wav     actor _ sentence _ emotion _ level
    VideoFlash/1001_DFA_ANG_XX.flv   optional video (VideoMP4/*.mp4 is used too if present)
    VideoDemographics.csv            optional: ActorID, Age, Sex, Race, Ethnicity

Actors are 1001..1091; emotions ANG DIS FEA HAP NEU SAD; levels LO, MD, HI or XX (unspecified).
The sentence code gives the transcript (the corpus's 12 sentences). ``speaker`` and ``session``
are both the actor id (leave-one-speaker-out is the usual protocol). Empty wav files (the corpus
has at least one) are skipped with a warning.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from ser_core.data.base import Utterance, is_hidden, read_text, require_some, resolve_dir, warn_skipped
from ser_core.errors import InputError

SENTENCES: dict[str, str] = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
EMOTIONS: dict[str, str] = {
    "ANG": "ang",
    "DIS": "dis",
    "FEA": "fea",
    "HAP": "hap",
    "NEU": "neu",
    "SAD": "sad",
}
LEVELS: dict[str, str] = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}

LAYOUT = (
    "expected the CREMA-D layout: an AudioWAV folder of files named like 1001_DFA_ANG_XX.wav "
    "(actor_sentence_emotion_level)"
)

_NAME = re.compile(r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<level>[A-Z]{1,2})$")
_MIN_WAV_BYTES = 45  # a RIFF/WAVE header alone is 44 bytes


def _audio_dir(root: Path) -> Path:
    if (root / "AudioWAV").is_dir():
        return root / "AudioWAV"
    if any(_NAME.match(p.stem) for p in root.glob("*.wav")):
        return root
    raise InputError(f"CREMA-D: no AudioWAV folder (or CREMA-D wav files) found under {root}; {LAYOUT}.")


def _demographics(top: Path) -> dict[str, dict[str, str]]:
    path = top / "VideoDemographics.csv"
    if not path.is_file():
        return {}
    rows = csv.DictReader(io.StringIO(read_text(path), newline=""))
    return {
        row["ActorID"].strip(): {k.lower(): (v or "").strip() for k, v in row.items() if k and k != "ActorID"}
        for row in rows
        if row.get("ActorID")
    }


def load(root: str | Path) -> list[Utterance]:
    """Load every CREMA-D clip in AudioWAV with its label, actor and sentence text."""
    base = resolve_dir(root, "CREMA-D")
    audio_dir = _audio_dir(base)
    top = audio_dir.parent if audio_dir.name == "AudioWAV" else base
    videos: dict[str, Path] = {}
    for folder, suffix in (("VideoMP4", ".mp4"), ("VideoFlash", ".flv")):  # flv wins if both
        if (top / folder).is_dir():
            videos.update({p.stem: p for p in (top / folder).glob(f"*{suffix}") if not is_hidden(p)})
    demographics = _demographics(top)

    utterances: list[Utterance] = []
    empty: list[str] = []
    for wav in sorted(audio_dir.glob("*.wav")):
        match = _NAME.match(wav.stem)
        if is_hidden(wav) or not match:
            continue
        if match["emotion"] not in EMOTIONS or match["sentence"] not in SENTENCES:
            continue
        if wav.stat().st_size < _MIN_WAV_BYTES:
            empty.append(wav.stem)
            continue
        actor = match["actor"]
        meta = {"sentence": match["sentence"], "level": LEVELS.get(match["level"], match["level"])}
        meta.update(demographics.get(actor, {}))
        utterances.append(
            Utterance(
                id=wav.stem,
                audio=wav,
                transcript=SENTENCES[match["sentence"]],
                label=EMOTIONS[match["emotion"]],
                speaker=actor,
                session=actor,
                start=None,
                end=None,
                video=videos.get(wav.stem),
                meta=meta,
            )
        )
    warn_skipped("CREMA-D", "wav file empty", empty)
    return require_some(utterances, "CREMA-D", audio_dir, LAYOUT[0].upper() + LAYOUT[1:] + ".")
