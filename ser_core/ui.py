"""Streamlit building blocks shared by the pages (widgets and session state only).

Pages stay thin: they pick inputs with these helpers, call ``ser_core.pipeline`` and draw with
``ser_core.viz``. Nothing here computes features or runs a model itself.
"""

from __future__ import annotations

import csv
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from .checkpoint import list_checkpoints, read_meta
from .errors import InputError
from .paths import CHECKPOINTS_DIR, SAMPLES_DIR

log = logging.getLogger("ser_core.ui")


@dataclass(frozen=True)
class Clip:
    """Audio chosen by the user: a display name, the raw bytes and an optional transcript/video."""

    name: str
    data: bytes
    transcript: str | None = None
    video: Path | None = None
    label: str | None = None


@st.cache_resource(show_spinner="Loading the model and encoders…")
def get_analyzer(checkpoint: str):
    """One Analyzer per checkpoint, shared by every session of this server."""
    from .pipeline import Analyzer

    return Analyzer(checkpoint)


def checkpoint_picker() -> str | None:
    """Sidebar: choose a checkpoint from checkpoints/; shows model, device and test scores."""
    paths = list_checkpoints(CHECKPOINTS_DIR)
    if not paths:
        st.sidebar.error("No checkpoint in checkpoints/. Train one with `python -m ser_core train`.")
        return None
    names = [p.name for p in paths]
    default = names.index("ks_transformer_demo.safetensors") if "ks_transformer_demo.safetensors" in names else 0
    chosen = st.sidebar.selectbox("Model checkpoint", names, index=default, key="checkpoint")
    try:
        meta = read_meta(CHECKPOINTS_DIR / chosen)
    except InputError as exc:
        st.sidebar.error(str(exc))
        return None
    test = meta.get("metrics", {}).get("test", {})
    import torch

    device = "GPU (" + torch.cuda.get_device_name(0) + ")" if torch.cuda.is_available() else "CPU"
    st.sidebar.caption(
        f"**{meta.get('model')}** · classes {', '.join(meta['config']['labels'])} · runs on {device}"
        + (f" · demo-corpus test WA {test['wa']:.2f} / UA {test['ua']:.2f}" if test else "")
    )
    return str(CHECKPOINTS_DIR / chosen)


def sample_clips() -> list[dict[str, str]]:
    """Rows of samples/manifest.csv (the committed example clips)."""
    manifest = SAMPLES_DIR / "manifest.csv"
    if not manifest.exists():
        return []
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


def clip_picker(key: str = "clip") -> Clip | None:
    """Sample / upload / record; returns the chosen clip (or None until one is chosen)."""
    samples = sample_clips()
    source = st.radio(
        "Audio", ["Sample clip", "Upload a file", "Record"], horizontal=True, key=f"{key}_source"
    )
    if source == "Sample clip":
        if not samples:
            st.info("No sample clips found in samples/.")
            return None
        labels = [_sample_title(r) for r in samples]
        i = st.selectbox("Sample", range(len(samples)), format_func=lambda j: labels[j], key=f"{key}_sample")
        row = samples[i]
        path = SAMPLES_DIR / row["path"]
        video = SAMPLES_DIR / row["video"] if row.get("video") else None
        return Clip(path.name, path.read_bytes(), row.get("transcript") or None, video, row.get("label"))
    if source == "Upload a file":
        up = st.file_uploader(
            "Speech (wav, flac, ogg, mp3, m4a, webm; up to 60 s)",
            type=["wav", "flac", "ogg", "mp3", "m4a", "webm", "mp4"],
            key=f"{key}_upload",
        )
        return Clip(up.name, up.getvalue()) if up is not None else None
    rec = st.audio_input("Record a sentence", key=f"{key}_record")
    return Clip("recording.wav", rec.getvalue()) if rec is not None else None


def _sample_title(row: dict[str, str]) -> str:
    words = row.get("transcript", "")
    text = words if len(words) < 48 else words[:45] + "…"
    return f"{row.get('label', '?')} voice · “{text}”"


def show_error(exc: BaseException) -> None:
    """A friendly message: InputError as-is; anything else summarised, details folded away."""
    if isinstance(exc, InputError):
        st.error(str(exc))
        return
    log.exception("unexpected error in the app")
    st.error(
        "Something went wrong while analysing this input. Nothing was lost: try another clip, "
        "or report the details below."
    )
    with st.expander("Details for a bug report"):
        st.code("".join(traceback.format_exception_only(type(exc), exc)).strip())
