"""A keep_ratio / top_p slider's next position, computed while the user looks at this one.

A move of the slider re-runs the model on the cached features: 35–50 ms of the ~300 ms a move
takes until the page is drawn again in a browser on a 2-core laptop. After a move, the model at the
next position in the same direction is run in the background, a moment later (once the browser
has drawn this one), so that the next step finds it ready; a student stepping through k with the
arrow keys or dragging slowly does not wait for the model. Only the latest result is kept per page
(a 10 s clip's maps that depend on k: ~45 MB), and nothing is computed ahead until the slider moves.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import streamlit as st
import torch

__all__ = ["RunsAhead", "STEP", "knob_setting", "rerun_at"]

STEP = 0.05  #: the sliders' step (``ui.sparsity_knob``)
LOW, HIGH = 0.05, 1.0  #: their ends
DELAY = 0.2  #: seconds after a move before the next position is run (the browser draws meanwhile)
#: Run ahead only when the model took at most this long on this clip: the run holds the model,
#: which every visitor of the server shares, and a long clip's run (~2 s at 60 s) would make
#: another visitor's analysis, or this visitor's move the other way, wait for it.
MAX_MODEL_SECONDS = 0.25


def knob_setting(analysis) -> tuple[str, float] | None:
    """("keep_ratio" or "top_p", the value the model ran at, to the sliders' 2 decimals) for a
    model with key-sparse or nucleus layers; None for one without."""
    for name in ("keep_ratio", "top_p"):
        values = [getattr(r, name) for r in analysis.trace.records if getattr(r, name) is not None]
        if values:
            return name, float(round(values[0], 2))
    return None


class RunsAhead:
    """Analyses of one page computed ahead, shared by the page's script and one background thread
    at a time. ``take`` gives a finished one; ``start`` asks for another (the newest ask wins)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: dict[tuple, Any] = {}
        self._wanted: tuple | None = None
        self.thread: threading.Thread | None = None  # the latest started (tests join it)

    @staticmethod
    def _key(base, knob: dict) -> tuple:
        checkpoint = str(base.analyzer.checkpoint) if base.analyzer is not None else None
        return base.features.key, checkpoint, tuple(sorted(knob.items()))

    def take(self, base, knob: dict):
        """``base`` re-run at ``knob`` if it was computed ahead, else None."""
        with self._lock:
            return self._done.get(self._key(base, knob))

    def forget(self) -> None:
        """Drop what was computed ahead (another clip is on the page: its maps are not needed)."""
        with self._lock:
            self._done, self._wanted = {}, None

    def start(self, base, knob: dict, delay: float = DELAY) -> threading.Thread | None:
        """Run ``base.rerun(**knob)`` in a background thread after ``delay`` s, unless it is done or
        under way, or another position is asked for before it starts. Returns the thread (None
        when nothing is started)."""
        key = self._key(base, knob)
        with self._lock:
            if key in self._done or key == self._wanted:
                return None
            self._wanted = key
        threads = torch.get_num_threads()  # the page's: a new thread's math library may use another

        def work() -> None:
            torch.set_num_threads(threads)  # (different splits of a sum differ in the last bits)
            time.sleep(delay)
            with self._lock:
                if self._wanted != key:  # the slider moved on: another position is wanted
                    return
            try:
                result = base.rerun(**knob)
            except Exception:  # the page runs this position itself if it comes to it, and says why
                result = None
            with self._lock:
                if self._wanted == key:
                    self._wanted = None
                    if result is not None:
                        self._done = {key: result}  # the latest only

        self.thread = threading.Thread(target=work, name="ser-knob-ahead", daemon=True)
        self.thread.start()
        return self.thread


def rerun_at(base, knob: dict, page: str):
    """``base`` at the slider's setting ``knob`` (what ``ui.sparsity_knob`` returned: {} at the
    model's own setting), from the run computed ahead when there is one; then, if the slider
    moved since this page's last run, the next position in the same direction is started (when
    the model is quick on this clip: :data:`MAX_MODEL_SECONDS`)."""
    runs: RunsAhead = st.session_state.setdefault(f"_runs_ahead_{page}", RunsAhead())
    analysis = base if not knob else (runs.take(base, knob) or base.rerun(**knob))
    setting = knob_setting(base)
    if setting is None:
        return analysis
    name, default = setting
    value = float(knob.get(name, default))
    last = st.session_state.get(f"_knob_last_{page}")
    st.session_state[f"_knob_last_{page}"] = (base.features.key, value)
    if last is None:
        return analysis
    if last[0] != base.features.key:  # another clip: what was run ahead is for the old one
        runs.forget()
        return analysis
    quick = analysis.timings.get("model", float("inf")) <= MAX_MODEL_SECONDS
    if quick and abs(last[1] - value) > 1e-9:
        following = round(value + (STEP if value > last[1] else -STEP), 2)
        if LOW - 1e-9 <= following <= HIGH + 1e-9 and abs(following - default) > 1e-9:
            runs.start(base, {name: following})
    return analysis
