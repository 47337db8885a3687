"""IEMOCAP (Busso et al., 2008) loader.

Assumed layout (the ``IEMOCAP_full_release`` folder as distributed; ``root`` may be that
folder or the folder holding it)::

    Session1/ ... Session5/
      dialog/EmoEvaluation/<dialog>.txt      one block per utterance; its first line is
          [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]
          (start - end in the dialog, utterance id, consensus label, [valence, arousal,
          dominance]); the annotators' lines (C-E2:, A-E3:, ...) and the sub-folders
          Categorical/, Attribute/, Self-evaluation/ are not read.
      dialog/transcriptions/<dialog>.txt     Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.
      dialog/avi/DivX/<dialog>.avi           whole-dialog video (optional)
      sentences/wav/<dialog>/<utterance id>.wav

The dialog is the utterance id without its last ``_`` field; the speaker is the session
prefix plus the gender letter that opens that last field (``Ses01F_impro01_M002`` is spoken by
``Ses01M``: in each dialog both actors speak, whichever of them the dialog name names).
``session`` is the folder name ``Session1`` ... ``Session5`` (the usual 5-fold
leave-one-session-out key). Labels other than the chosen classes (xxx, oth, sur, fea, dis, and
fru/exc for 4 classes) are dropped. With ``classes=4``, exc is merged into hap (as most SER
papers do); ``meta["original_label"]`` keeps the annotated one.
"""

from __future__ import annotations

import re
from pathlib import Path

from ser_core.data.base import Utterance, is_hidden, read_text, require_some, resolve_dir, warn_skipped
from ser_core.errors import InputError

CLASSES: dict[int, tuple[str, ...]] = {
    4: ("ang", "hap", "sad", "neu"),
    6: ("ang", "hap", "exc", "sad", "fru", "neu"),
}

LAYOUT = (
    "expected the IEMOCAP_full_release layout: Session1..Session5, each with "
    "dialog/EmoEvaluation/*.txt and sentences/wav/<dialog>/<utterance>.wav"
)

# [6.2901 - 8.2357]	Ses01F_impro01_F000	neu	[2.5000, 2.5000, 2.5000]
_EVAL_LINE = re.compile(
    r"^\[\s*(?P<start>\d+(?:\.\d*)?)\s*-\s*(?P<end>\d+(?:\.\d*)?)\s*\]\s+"
    r"(?P<id>Ses\d\d[MF]_\S+)\s+(?P<label>\w+)\s+\[(?P<vad>[^\]]*)\]"
)
# Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.
_TRANSCRIPT_LINE = re.compile(r"^(?P<id>Ses\d\d[MF]_\S+)\s*\[[^\]]*\]:\s?(?P<text>.*)$")
_SESSION_DIR = re.compile(r"^Session([1-5])$")


def _find_root(root: Path) -> Path:
    """The folder holding Session1..5: ``root`` itself or its IEMOCAP_full_release child."""
    for candidate in (root, root / "IEMOCAP_full_release"):
        if candidate.is_dir() and any(
            _SESSION_DIR.match(p.name) and p.is_dir() for p in candidate.iterdir()
        ):
            return candidate
    raise InputError(f"IEMOCAP: no Session1..5 folders found under {root}; {LAYOUT}.")


def speaker_of(utterance_id: str) -> str:
    """``Ses01F_impro01_M002`` -> ``Ses01M``: session prefix + the last field's gender letter."""
    return utterance_id[:5] + utterance_id.rsplit("_", 1)[-1][0]


def dialog_of(utterance_id: str) -> str:
    """``Ses01F_script01_1b_F012`` -> ``Ses01F_script01_1b``."""
    return utterance_id.rsplit("_", 1)[0]


def read_evaluation(path: Path) -> list[dict]:
    """The consensus line of every utterance in one EmoEvaluation file."""
    rows = []
    for line in read_text(path).splitlines():
        match = _EVAL_LINE.match(line.strip())
        if not match:
            continue
        vad = [float(x) for x in re.findall(r"\d+(?:\.\d*)?", match["vad"])]
        rows.append(
            {
                "id": match["id"],
                "label": match["label"].lower(),
                "start": float(match["start"]),
                "end": float(match["end"]),
                "vad": tuple(vad) if len(vad) == 3 else None,
            }
        )
    return rows


def read_transcriptions(path: Path) -> dict[str, str]:
    """Utterance id -> text from one dialog's transcription file (other lines are ignored)."""
    texts: dict[str, str] = {}
    if not path.is_file():
        return texts
    for line in read_text(path).splitlines():
        match = _TRANSCRIPT_LINE.match(line.strip())
        if match:
            texts[match["id"]] = match["text"].strip()
    return texts


def load(root: str | Path, classes: int = 4) -> list[Utterance]:
    """Load IEMOCAP's labelled utterances in ``classes`` (4: ang/hap+exc/sad/neu; 6: + exc, fru)."""
    if classes not in CLASSES:
        raise InputError(f"IEMOCAP: classes must be 4 or 6, not {classes!r}.")
    keep = CLASSES[classes]
    base = _find_root(resolve_dir(root, "IEMOCAP"))
    sessions = sorted(
        (p for p in base.iterdir() if p.is_dir() and _SESSION_DIR.match(p.name)),
        key=lambda p: p.name,
    )
    utterances: list[Utterance] = []
    missing: list[str] = []
    n_evaluation_files = 0
    for session_dir in sessions:
        eval_dir = session_dir / "dialog" / "EmoEvaluation"
        if not eval_dir.is_dir():
            continue
        for eval_file in sorted(eval_dir.glob("*.txt")):
            if is_hidden(eval_file):
                continue
            n_evaluation_files += 1
            dialog = eval_file.stem
            texts = read_transcriptions(session_dir / "dialog" / "transcriptions" / f"{dialog}.txt")
            video = session_dir / "dialog" / "avi" / "DivX" / f"{dialog}.avi"
            video_path = video if video.is_file() else None
            for row in read_evaluation(eval_file):
                original = row["label"]
                label = "hap" if classes == 4 and original == "exc" else original
                if label not in keep:
                    continue
                utt_id = row["id"]
                wav = session_dir / "sentences" / "wav" / dialog_of(utt_id) / f"{utt_id}.wav"
                if not wav.is_file():
                    missing.append(utt_id)
                    continue
                meta = {"dialog": dialog_of(utt_id), "original_label": original}
                if row["vad"] is not None:
                    meta["valence"], meta["arousal"], meta["dominance"] = row["vad"]
                utterances.append(
                    Utterance(
                        id=utt_id,
                        audio=wav,
                        transcript=texts.get(utt_id),
                        label=label,
                        speaker=speaker_of(utt_id),
                        session=session_dir.name,
                        start=row["start"],
                        end=row["end"],
                        video=video_path,
                        meta=meta,
                    )
                )
    if n_evaluation_files == 0:
        raise InputError(
            f"IEMOCAP: found Session folders under {base} but no dialog/EmoEvaluation/*.txt "
            f"files in them; {LAYOUT}."
        )
    warn_skipped("IEMOCAP", "wav file missing", missing)
    return require_some(
        utterances, "IEMOCAP", base, f"None of the labelled utterances in {keep} has its wav; {LAYOUT}."
    )
