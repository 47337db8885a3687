"""Progress of a training job, read from the events file the trainer appends (``--events``).

:func:`read_events` turns a job's ``events.jsonl`` (and, while features are being extracted, the
progress bar at the end of its log) into a :class:`Progress`: phase, epoch and batch, per-batch
losses and per-epoch validation rows for the Train page's live curves. Resumed runs append to the
same file; a redone batch replaces the first try's loss. The job records themselves, and
starting and stopping them, are in ``ser_core.jobs``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .jobs import Job


@dataclass
class Progress:
    """What the events say so far. ``losses``: (x in epochs, loss) for every batch trained."""

    phase: str = "starting"  # starting | features | training | done | stopped
    n_utterances: int | None = None
    features: tuple[str, int, int] | None = None  # (part, done, total) from the log's progress bar
    epochs: int | None = None
    batches: int | None = None
    epoch: int = 0  # the epoch the last batch belonged to (1-based)
    batch: int = 0
    losses: list[tuple[float, float]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    test: dict[str, Any] | None = None
    checkpoint: str | None = None
    updated: float | None = None

    @property
    def steps_done(self) -> int:
        if not self.batches:
            return 0
        finished = max([r["epoch"] for r in self.history], default=0)
        if self.epoch > finished:
            return (self.epoch - 1) * self.batches + self.batch
        return finished * self.batches

    @property
    def fraction(self) -> float:
        if self.phase == "done":
            return 1.0
        if not self.epochs or not self.batches:
            return 0.0
        return min(1.0, self.steps_done / (self.epochs * self.batches))


def _events(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being written right now
            continue
    return out


_FEATURE_BAR = re.compile(r"(\w+) features:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def read_events(job: Job) -> Progress:
    """Progress of ``job`` from its events file (resumed runs included: a redone batch replaces
    the first try's loss, and each ``start`` event carries the epochs finished so far)."""
    p = Progress()
    losses: dict[int, float] = {}
    for e in _events(job.events_path):
        kind = e.get("event")
        p.updated = e.get("time", p.updated)
        if kind == "features":
            p.phase, p.n_utterances = "features", e.get("n")
        elif kind == "start":
            p.phase, p.epochs, p.batches = "training", e["epochs"], e["batches"]
            p.history = [dict(r) for r in e.get("history", [])]
            p.labels = list(e.get("labels", []))
            done = max([r["epoch"] for r in p.history], default=0)
            p.epoch, p.batch = done, p.batches if done else 0
        elif kind == "batch":
            p.phase, p.epoch, p.batch, p.batches = "training", e["epoch"], e["batch"], e["batches"]
            losses[(e["epoch"] - 1) * e["batches"] + e["batch"] - 1] = float(e["loss"])
        elif kind == "epoch":
            row = {k: v for k, v in e.items() if k not in ("event", "time")}
            p.history = [r for r in p.history if r["epoch"] != row["epoch"]] + [row]
        elif kind == "done":
            p.phase, p.test, p.checkpoint = "done", e.get("test"), e.get("checkpoint")
        elif kind == "stopped":
            p.phase = "stopped"
    if p.batches:
        p.losses = [((step + 1) / p.batches, loss) for step, loss in sorted(losses.items())]
    if p.phase in ("starting", "features"):
        found = _FEATURE_BAR.findall(job.log_raw(3000))
        if found:
            part, done, total = found[-1]
            p.features = (part, int(done), int(total))
    return p
