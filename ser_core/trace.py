"""The one trace type every model returns (see DESIGN.md, "One trace type for every model").

A model's forward pass fills an :class:`AttentionTrace` with one :class:`AttentionRecord`
per attention layer. Views (``ser_core.viz``) read only these records, never model
internals, so one set of views serves all four papers.

Arrays are stored as numpy on CPU (detached), for one utterance (no batch axis).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

AttentionKind = Literal["self", "cross", "key-sparse", "nucleus", "pooling", "co-attention"]

#: Positions per axis of a map kept at display resolution (``AttentionRecord.pool``); the
#: heatmap draws at most as many (``viz.MAX_CELLS_PER_AXIS``), so nothing on screen changes.
POOLED_CELLS = 400


@dataclass
class AxisLabels:
    """What indexes one axis of an attention map.

    kind: "words" (text tokens pooled to words), "frames" (speech frames on a time axis),
    "chunks" (MESM 400 ms spectrogram chunks), "patches" (face-crop / spectrogram points),
    "segments", "levels", ...
    names: one display label per position ("happy", "1.24 s", "(3, 4)").
    start/end: seconds, where the position has a time span (words, frames, chunks).
    coords: extra per-position coordinates, e.g. [T, 2] (row, col) of a map point.
    """

    kind: str
    names: list[str]
    start: np.ndarray | None = None
    end: np.ndarray | None = None
    coords: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "names": list(self.names),
            "start": None if self.start is None else np.asarray(self.start).tolist(),
            "end": None if self.end is None else np.asarray(self.end).tolist(),
            "coords": None if self.coords is None else np.asarray(self.coords).tolist(),
        }


@dataclass
class AttentionRecord:
    """One attention layer's maps for one utterance.

    name: e.g. ``"ccab2.cross"`` or ``"audio_encoder.0"``.
    kind: self / cross / key-sparse / nucleus / ...
    query_modality, key_modality: "audio", "text", "visual", "fused".
    weights: [heads, Tq, Tk] after masking (what the layer actually used).
    key_scores: [heads, Tk] column sums of the (unmasked) weights, or None.
    keep: bool mask of kept keys [heads, Tk] (key-sparse) or of kept points
        (nucleus, shape of the map it masks); None where nothing is dropped.
    keep_ratio / top_p: the setting used for this layer (None where not applicable).
    stats: small scalars, e.g. {"flops": ..., "dense_flops": ..., "kept": ...}.
    pool: (1, 1) for a full map. Otherwise ``weights`` holds the map max-pooled over blocks of
        pool[0] queries × pool[1] keys, ⌈Tq / pool[0]⌉ × ⌈Tk / pool[1]⌉ per head, while the labels,
        key scores and keep mask stay one per position: the analysis pipeline keeps a clip's
        maps at display resolution (:data:`POOLED_CELLS` per axis) when the clip is longer than
        the deletion test and the attributions accept (a 60 s clip's full maps are ~3 GB).
        Each head is pooled on its own, so their mean is the mean of each head's block maxima.
    """

    name: str
    kind: AttentionKind
    query_modality: str
    key_modality: str
    weights: np.ndarray
    query_labels: AxisLabels
    key_labels: AxisLabels
    key_scores: np.ndarray | None = None
    keep: np.ndarray | None = None
    keep_ratio: float | None = None
    top_p: float | None = None
    stats: dict[str, float] = field(default_factory=dict)
    pool: tuple[int, int] = (1, 1)

    @property
    def heads(self) -> int:
        return int(self.weights.shape[0])

    @property
    def pooled(self) -> bool:
        """True when ``weights`` is the map max-pooled over blocks (see ``pool``)."""
        return tuple(self.pool) != (1, 1)

    def to_dict(self, with_weights: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "query_modality": self.query_modality,
            "key_modality": self.key_modality,
            "shape": list(self.weights.shape),
            "pool": list(self.pool),
            "keep_ratio": self.keep_ratio,
            "top_p": self.top_p,
            "stats": dict(self.stats),
            "query_labels": self.query_labels.to_dict(),
            "key_labels": self.key_labels.to_dict(),
        }
        if with_weights:
            out["weights"] = np.round(self.weights.astype(np.float64), 6).tolist()
        if self.key_scores is not None:
            out["key_scores"] = np.round(self.key_scores.astype(np.float64), 6).tolist()
        if self.keep is not None:
            out["keep"] = self.keep.astype(bool).tolist()
        return out


@dataclass
class AttentionTrace:
    """Every attention record of one forward pass, plus model-level extras.

    extras holds non-attention things a view may show: MFSN's α distribution and
    chosen level, MESM's per-layer FLOPs, ILT's fusion weight, ... (JSON-able values
    or numpy arrays).
    """

    model: str
    records: list[AttentionRecord] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def add(self, record: AttentionRecord) -> None:
        self.records.append(record)

    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def __getitem__(self, name: str) -> AttentionRecord:
        for r in self.records:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self, with_weights: bool = True) -> dict[str, Any]:
        return {
            "model": self.model,
            "records": [r.to_dict(with_weights) for r in self.records],
            "extras": _jsonable(self.extras),
        }

    def to_json(self, with_weights: bool = True) -> str:
        return json.dumps(self.to_dict(with_weights))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
