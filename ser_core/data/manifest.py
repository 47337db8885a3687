"""Manifest loader: any corpus described by one CSV file.

Assumed layout::

    my_corpus/manifest.csv
        path,label[,id][,transcript][,speaker][,session][,split][,start][,end][,video][,<anything>]
    my_corpus/<path>          audio files, relative to the CSV's folder (or absolute)

Required columns: ``path`` and ``label``. ``label`` is a short name (ang, hap, exc, sad, neu, fru,
fea, dis, sur, cal) or its long name / common spelling (anger, angry, happy, joy, ...); anything
else raises InputError naming the row. ``id`` defaults to the audio path (relative, without
suffix); ``speaker`` to ""; ``session`` to ``split`` (or ""); ``split`` is kept in
``meta["split"]`` for :func:`ser_core.data.protocols.predefined_split`. ``start``/``end`` are
seconds locating the utterance inside the file at ``path`` (when it is a longer recording).
Every other column goes into ``meta``, JSON-looking cells (``[...]``/``{...}``) parsed; empty
cells become None. Rows whose audio file is missing are skipped with a warning.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path

from ser_core.data.base import (
    LABELS,
    Utterance,
    normalize_label,
    parse_json_like,
    read_text,
    require_some,
    warn_skipped,
)
from ser_core.errors import InputError

KNOWN_COLUMNS = ("path", "label", "id", "transcript", "speaker", "session", "split", "start", "end", "video")


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _seconds(value: str, column: str, where: str) -> float | None:
    if value.strip() == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise InputError(f"Manifest {where}: {column} {value!r} is not a number of seconds.") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InputError(f"Manifest {where}: {column} {value!r} must be a finite, non-negative time.")
    return seconds


def load(root: str | Path) -> list[Utterance]:
    """Load the utterances listed in the manifest CSV ``root`` (a file, or a folder holding manifest.csv)."""
    if root is None or str(root).strip() == "":
        raise InputError("No manifest CSV given.")
    path = Path(root).expanduser()
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise InputError(f"Manifest: {path} does not exist; expected a CSV with at least path,label columns.")
    base = path.parent
    try:
        text = read_text(path)
    except OSError as exc:
        raise InputError(f"Manifest: cannot read {path}: {exc.strerror or exc}.") from None
    if "\x00" in text:
        raise InputError(f"Manifest: {path} is not a text CSV file.")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        columns = [c.strip() for c in (reader.fieldnames or [])]
        records = list(reader)
    except csv.Error as exc:
        raise InputError(f"Manifest: {path.name} is not a readable CSV file ({exc}).") from None
    absent = [c for c in ("path", "label") if c not in columns]
    if absent:  # names only what is missing: never echo the first line of a file that is no manifest
        raise InputError(
            f"Manifest: {path.name} lacks the column(s) {', '.join(absent)}; "
            f"expected a CSV header with at least path,label."
        )

    utterances: list[Utterance] = []
    missing: list[str] = []
    missing_video: list[str] = []
    seen: dict[str, int] = {}
    for line_no, raw in enumerate(records, start=2):
        if None in raw:
            raise InputError(f"Manifest {path.name} row {line_no}: more cells than header columns.")
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        where = f"{path.name} row {line_no}"
        if not any(row.values()):
            continue  # blank line
        label = normalize_label(row["label"])
        if label is None:
            raise InputError(
                f"Manifest {where}: unknown label {row['label']!r}; expected one of {', '.join(LABELS)}."
            )
        if not row["path"]:
            raise InputError(f"Manifest {where}: the path cell is empty.")
        audio = _resolve(base, row["path"])
        utt_id = row.get("id") or str(Path(row["path"]).with_suffix("")).replace("\\", "/")
        if utt_id in seen:
            raise InputError(f"Manifest {where}: id {utt_id!r} repeats row {seen[utt_id]}.")
        seen[utt_id] = line_no
        if not audio.is_file():
            missing.append(utt_id)
            continue
        video = _resolve(base, row["video"]) if row.get("video") else None
        if video is not None and not video.is_file():
            missing_video.append(utt_id)
            video = None
        meta = {k: parse_json_like(v) if v != "" else None for k, v in row.items() if k not in KNOWN_COLUMNS}
        split = row.get("split") or ""
        if split:
            meta["split"] = split
        start = _seconds(row.get("start", ""), "start", where)
        end = _seconds(row.get("end", ""), "end", where)
        if start is not None and end is not None and end < start:
            raise InputError(f"Manifest {where}: end ({end}) is before start ({start}).")
        utterances.append(
            Utterance(
                id=utt_id,
                audio=audio,
                transcript=row.get("transcript") or None,
                label=label,
                speaker=row.get("speaker") or "",
                session=row.get("session") or split,
                start=start,
                end=end,
                video=video,
                meta=meta,
            )
        )
    warn_skipped("Manifest", "audio file missing", missing)
    if missing_video:
        warnings.warn(
            f"Manifest: {len(missing_video)} row(s) list a video file that does not exist; "
            f"they are kept without video ({', '.join(missing_video[:3])}).",
            UserWarning,
            stacklevel=2,
        )
    return require_some(utterances, "Manifest", base, f"{path.name} lists no row whose audio file exists.")
