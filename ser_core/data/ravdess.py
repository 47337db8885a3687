"""RAVDESS (Livingstone & Russo, 2018) loader.

Assumed layout (the Zenodo zips unpacked; ``root`` holds the ``Actor_XX`` folders, directly or
one level down, e.g. ``Audio_Speech_Actors_01-24/Actor_01`` beside ``Video_Speech_Actor_01/Actor_01``)::

    Actor_01/ ... Actor_24/
      03-01-05-01-02-01-12.wav    audio-only (modality 03; .flac is read the same way)
      01-01-05-01-02-01-12.mp4    full audio-video (modality 01, optional)
      02-01-05-01-02-01-12.mp4    video-only (modality 02, optional)

A file name is seven two-digit fields: modality (01 full-AV, 02 video-only, 03 audio-only) -
vocal channel (01 speech, 02 song) - emotion (01 neutral, 02 calm, 03 happy, 04 sad, 05 angry,
06 fearful, 07 disgust, 08 surprised) - intensity (01 normal, 02 strong) - statement
(01 "Kids are talking by the door", 02 "Dogs are sitting by the door") - repetition (01, 02) -
actor (01..24; odd male, even female).

One utterance per recording: its id is the audio-only name ``03-…`` (whatever file it came
from). ``audio`` is the 03 wav (or flac); where only the full-AV mp4 exists, that mp4 (its audio track).
``video`` is the full-AV mp4 if present, else the video-only one, else None. ``speaker`` and
``session`` are both ``Actor_XX`` (leave-one-speaker-out is the usual protocol).
"""

from __future__ import annotations

import re
from pathlib import Path

from ser_core.data.base import Utterance, is_hidden, require_some, resolve_dir
from ser_core.errors import InputError

EMOTIONS: dict[str, str] = {
    "01": "neu",
    "02": "cal",
    "03": "hap",
    "04": "sad",
    "05": "ang",
    "06": "fea",
    "07": "dis",
    "08": "sur",
}
STATEMENTS: dict[str, str] = {
    "01": "Kids are talking by the door",
    "02": "Dogs are sitting by the door",
}
VOCAL_CHANNELS: dict[str, str] = {"01": "speech", "02": "song"}
INTENSITIES: dict[str, str] = {"01": "normal", "02": "strong"}

LAYOUT = (
    "expected the RAVDESS layout: Actor_01..Actor_24 folders holding files named like "
    "03-01-05-01-02-01-12.wav (modality-channel-emotion-intensity-statement-repetition-actor)"
)

_NAME = re.compile(
    r"^(?P<modality>0[123])-(?P<channel>0[12])-(?P<emotion>0[1-8])-(?P<intensity>0[12])-"
    r"(?P<statement>0[12])-(?P<repetition>0[12])-(?P<actor>\d\d)$"
)
AUDIO_SUFFIXES = (".wav", ".flac")
_ACTOR_DIR = re.compile(r"^Actor_\d\d$")


def _actor_dirs(root: Path) -> list[Path]:
    dirs = [p for p in root.iterdir() if p.is_dir() and _ACTOR_DIR.match(p.name)]
    for child in root.iterdir():
        if child.is_dir() and not _ACTOR_DIR.match(child.name) and not is_hidden(child):
            dirs += [p for p in child.iterdir() if p.is_dir() and _ACTOR_DIR.match(p.name)]
    if _ACTOR_DIR.match(root.name):  # pointed at one actor's folder
        dirs.append(root)
    return sorted(dirs)


def load(root: str | Path, vocal_channel: str = "speech") -> list[Utterance]:
    """Load RAVDESS recordings of ``vocal_channel`` ("speech", "song" or "all")."""
    channels = {"speech": {"01"}, "song": {"02"}, "all": {"01", "02"}}.get(vocal_channel)
    if channels is None:
        raise InputError(f"RAVDESS: vocal_channel must be speech, song or all, not {vocal_channel!r}.")
    base = resolve_dir(root, "RAVDESS")
    actor_dirs = _actor_dirs(base)
    if not actor_dirs:
        raise InputError(f"RAVDESS: no Actor_XX folders found under {base}; {LAYOUT}.")

    # key = the six fields after modality; value = {modality: path}
    files: dict[str, dict[str, Path]] = {}
    for actor_dir in actor_dirs:
        for path in actor_dir.iterdir():
            if is_hidden(path) or path.suffix.lower() not in AUDIO_SUFFIXES + (".mp4",):
                continue
            match = _NAME.match(path.stem)
            if not match or match["channel"] not in channels:
                continue
            modality = match["modality"]
            if (modality == "03") != (path.suffix.lower() in AUDIO_SUFFIXES):
                continue  # 03 is audio-only wav/flac; 01/02 are mp4
            files.setdefault(path.stem[3:], {})[modality] = path

    utterances = []
    for key in sorted(files):
        by_modality = files[key]
        audio = by_modality.get("03") or by_modality.get("01")
        if audio is None:  # video-only recording: no sound to classify
            continue
        match = _NAME.match("03-" + key)
        assert match is not None
        actor = f"Actor_{match['actor']}"
        utterances.append(
            Utterance(
                id="03-" + key,
                audio=audio,
                transcript=STATEMENTS[match["statement"]],
                label=EMOTIONS[match["emotion"]],
                speaker=actor,
                session=actor,
                start=None,
                end=None,
                video=by_modality.get("01") or by_modality.get("02"),
                meta={
                    "vocal_channel": VOCAL_CHANNELS[match["channel"]],
                    "intensity": INTENSITIES[match["intensity"]],
                    "statement": match["statement"],
                    "repetition": match["repetition"],
                    "gender": "male" if int(match["actor"]) % 2 else "female",
                },
            )
        )
    return require_some(utterances, "RAVDESS", base, LAYOUT[0].upper() + LAYOUT[1:] + ".")
