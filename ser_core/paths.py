"""Where the project keeps generated things (never committed)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO_ROOT / "samples"
CHECKPOINTS_DIR = REPO_ROOT / "checkpoints"


def cache_dir() -> Path:
    """User cache: converted encoder weights, feature cache, generated corpora.

    ``SER_CACHE_DIR`` overrides it (tests point it at a temporary directory).
    """
    root = os.environ.get("SER_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ser-explorer"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_corpus_dir() -> Path:
    """Where ``python -m ser_core corpus`` writes the demo corpus by default."""
    return Path(os.environ.get("SER_CORPUS_DIR") or cache_dir() / "demo_corpus")
