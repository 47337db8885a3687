"""MELD (Poria et al., 2019) loader.

Assumed layout (``MELD.Raw`` unpacked; ``root`` is that folder or the one holding it)::

    train_sent_emo.csv  dev_sent_emo.csv  test_sent_emo.csv
        Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime
    train_splits/dia{D}_utt{U}.mp4                   (or train/train_splits/…)
    dev_splits_complete/dia{D}_utt{U}.mp4            (or dev/dev_splits_complete/…)
    output_repeated_splits_test/dia{D}_utt{U}.mp4    (or test/output_repeated_splits_test/…)

Each clip is the utterance itself; its audio is the mp4's sound track (decoded elsewhere), so
``audio`` is the mp4 unless a pre-extracted wav exists, looked for as ``dia{D}_utt{U}.wav`` in
the clip folder itself, ``<clip folder>_wav/``, ``<split>_wav/``, ``wav/<split>/`` or
``audio/<split>/``; ``video`` is the mp4 when present.

Emotions: anger→ang, joy→hap, sadness→sad, neutral→neu, fear→fea, disgust→dis, surprise→sur.
``session`` is the official split (train/dev/test) and ``meta["split"]`` repeats it; ``speaker``
is the character's name. ``id`` is ``{split}_dia{D}_utt{U}`` (dialogue numbers restart per split).
StartTime/EndTime locate the utterance in its *episode*, which the corpus does not ship, so they
go to ``meta["episode_start"/"episode_end"]`` (seconds) and ``start``/``end`` stay None.

The CSVs' text has encoding quirks: some releases hold cp1252 bytes, others cp1252 punctuation
as C1 control characters (U+0092 for ’) or UTF-8 read as Latin-1 (``â\\x80\\x99``); all are
repaired to the intended characters.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from ser_core.data.base import Utterance, read_text, require_some, resolve_dir, warn_skipped
from ser_core.errors import InputError

EMOTIONS: dict[str, str] = {
    "anger": "ang",
    "joy": "hap",
    "sadness": "sad",
    "neutral": "neu",
    "fear": "fea",
    "disgust": "dis",
    "surprise": "sur",
}
SPLITS: dict[str, str] = {
    "train": "train_splits",
    "dev": "dev_splits_complete",
    "test": "output_repeated_splits_test",
}
REQUIRED_COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")

LAYOUT = (
    "expected the MELD.Raw layout: train_sent_emo.csv, dev_sent_emo.csv, test_sent_emo.csv beside "
    "the clip folders train_splits/, dev_splits_complete/, output_repeated_splits_test/"
)

_C1 = re.compile("[\u0080-\u009f\u00a0]")
_TIME = re.compile(r"^(\d+):(\d\d):(\d\d)(?:[,.](\d+))?$")


def fix_text(text: str) -> str:
    """Repair the MELD CSVs' mis-encoded punctuation (mojibake and cp1252 C1 code points)."""
    if any("\u0080" <= ch <= "\u00ff" for ch in text):
        for wrong in ("latin-1", "cp1252"):  # UTF-8 bytes that were decoded as this codec
            try:
                repaired = text.encode(wrong).decode("utf-8")
            except UnicodeError:
                continue
            if repaired != text:
                text = repaired
                break

    def c1(match: re.Match) -> str:
        if match.group() == "\u00a0":
            return " "
        try:
            return bytes([ord(match.group())]).decode("cp1252")
        except UnicodeDecodeError:
            return match.group()

    return _C1.sub(c1, text)


def parse_time(value: str) -> float | None:
    """``00:14:38,127`` -> 878.127 seconds (None if it does not parse)."""
    match = _TIME.match((value or "").strip())
    if not match:
        return None
    hours, minutes, seconds, fraction = match.groups()
    frac = float("0." + fraction) if fraction else 0.0
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + frac


def _find_root(root: Path) -> Path:
    for candidate in (root, root / "MELD.Raw"):
        if candidate.is_dir() and any((candidate / f"{s}_sent_emo.csv").is_file() for s in SPLITS):
            return candidate
    raise InputError(f"MELD: no train/dev/test_sent_emo.csv found under {root}; {LAYOUT}.")


def _first_dir(candidates: list[Path]) -> Path | None:
    return next((c for c in candidates if c.is_dir()), None)


def read_split_csv(path: Path) -> list[dict[str, str]]:
    """Rows of one ``*_sent_emo.csv`` with header names stripped; InputError if columns lack."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    try:
        fields = [f.strip() for f in (reader.fieldnames or [])]
        records = list(reader)
    except csv.Error as exc:
        raise InputError(f"MELD: {path.name} is not a readable CSV file ({exc}).") from None
    absent = [c for c in REQUIRED_COLUMNS if c not in fields]
    if absent:
        raise InputError(f"MELD: {path.name} lacks the column(s) {', '.join(absent)}; {LAYOUT}.")
    return [{(k or "").strip(): (v or "") for k, v in row.items()} for row in records]


def load(root: str | Path, splits: tuple[str, ...] = ("train", "dev", "test")) -> list[Utterance]:
    """Load MELD's utterances of the given official ``splits`` with text, speaker and label."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise InputError(f"MELD: unknown split(s) {unknown}; choose from train, dev, test.")
    base = _find_root(resolve_dir(root, "MELD"))
    utterances: list[Utterance] = []
    missing: list[str] = []
    for split in splits:
        csv_path = base / f"{split}_sent_emo.csv"
        if not csv_path.is_file():
            continue
        clip_name = SPLITS[split]
        clip_dir = _first_dir([base / clip_name, base / split / clip_name])
        wav_dirs = [
            d
            for d in (
                clip_dir,
                base / f"{clip_name}_wav",
                base / f"{split}_wav",
                base / "wav" / split,
                base / "audio" / split,
            )
            if d is not None and d.is_dir()
        ]
        for line_no, row in enumerate(read_split_csv(csv_path), start=2):
            emotion = row["Emotion"].strip().lower()
            if emotion not in EMOTIONS:
                raise InputError(
                    f"MELD: {csv_path.name} line {line_no} has the emotion {row['Emotion']!r}; "
                    f"expected one of {', '.join(EMOTIONS)}."
                )
            try:
                dialogue, utt = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
            except ValueError:
                raise InputError(
                    f"MELD: {csv_path.name} line {line_no} has a non-numeric Dialogue_ID/Utterance_ID."
                ) from None
            stem = f"dia{dialogue}_utt{utt}"
            mp4 = clip_dir / f"{stem}.mp4" if clip_dir is not None else None
            video = mp4 if mp4 is not None and mp4.is_file() else None
            wav = next((d / f"{stem}.wav" for d in wav_dirs if (d / f"{stem}.wav").is_file()), None)
            audio = wav or video
            if audio is None:
                missing.append(f"{split}/{stem}")
                continue
            meta = {
                "split": split,
                "sentiment": row.get("Sentiment", "").strip() or None,
                "dialogue_id": dialogue,
                "utterance_id": utt,
                "season": int(row["Season"]) if row.get("Season", "").strip().isdigit() else None,
                "episode": int(row["Episode"]) if row.get("Episode", "").strip().isdigit() else None,
                "episode_start": parse_time(row.get("StartTime", "")),
                "episode_end": parse_time(row.get("EndTime", "")),
            }
            utterances.append(
                Utterance(
                    id=f"{split}_{stem}",
                    audio=audio,
                    transcript=fix_text(row["Utterance"]).strip(),
                    label=EMOTIONS[emotion],
                    speaker=fix_text(row["Speaker"]).strip(),
                    session=split,
                    start=None,
                    end=None,
                    video=video,
                    meta=meta,
                )
            )
    warn_skipped("MELD", "neither its mp4 clip nor an extracted wav exists", missing)
    return require_some(utterances, "MELD", base, LAYOUT[0].upper() + LAYOUT[1:] + ".")
