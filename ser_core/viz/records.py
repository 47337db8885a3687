"""Reading attention records and building map axes (shared by the attention, audio and export views).

Records
    :func:`head_weights`, :func:`head_keep` and :func:`head_key_scores` bring a record's
    ``[heads, queries, keys]`` weights, keep mask and key scores to one head (or the mean over
    heads); :func:`top_k_threshold` is the key-sparse top-k cut.

Axes
    An axis indexed by words (or anything without times) is categorical: positions 0..n-1
    with the words as tick labels (repeated words stay separate). An axis indexed by frames,
    chunks or segments with ``start``/``end`` times is a TIME axis in seconds (cell centres).
    :func:`max_pool_2d` pools large maps over blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from ser_core.errors import InputError
from ser_core.kept import most_heads
from ser_core.trace import AttentionRecord, AxisLabels

Head = int | Literal["mean"]


# --------------------------------------------------------------------------- record helpers


def _check_record(record: AttentionRecord) -> np.ndarray:
    if not isinstance(record, AttentionRecord):
        raise InputError("Expected an attention record from a model's trace.")
    weights = np.asarray(record.weights)  # as stored (no copy)
    if weights.ndim != 3 or 0 in weights.shape:
        raise InputError(
            f"Attention record {record.name!r} has weights of shape {weights.shape}; "
            "expected [heads, queries, keys]."
        )
    if _pooled_shape(record) != weights.shape[1:]:
        raise InputError(
            f"Attention record {record.name!r}: {len(record.query_labels)} query labels and "
            f"{len(record.key_labels)} key labels do not match its map {weights.shape[1:]}"
            + (f" pooled over {record.pool[0]}×{record.pool[1]} blocks." if record.pooled else ".")
        )
    return weights


def _pooled_shape(record: AttentionRecord) -> tuple[int, int]:
    """(queries, keys) of the stored map: one per label, or one per block of a pooled map."""
    bq, bk = record.pool
    return -(-len(record.query_labels) // bq), -(-len(record.key_labels) // bk)


def _head_index(record: AttentionRecord, head: Head) -> int | None:
    """Return the head index, or None for the mean over heads."""
    if isinstance(head, str):
        if head != "mean":
            raise InputError(f"Head must be a number or 'mean', not {head!r}.")
        return None
    if isinstance(head, bool) or not isinstance(head, (int, np.integer)):
        raise InputError(f"Head must be a number or 'mean', not {head!r}.")
    if not 0 <= int(head) < record.heads:
        raise InputError(
            f"Head {head} does not exist in {record.name!r}: it has {record.heads} head(s), "
            f"numbered 0 to {record.heads - 1}."
        )
    return int(head)


def _head_label(h: int | None, heads: int) -> str:
    return f"mean of {heads} heads" if h is None else f"head {h}"


def head_weights(record: AttentionRecord, head: Head) -> np.ndarray:
    """The [Tq, Tk] map of one head, or the mean over heads."""
    weights = _check_record(record)
    h = _head_index(record, head)
    return weights.mean(axis=0, dtype=np.float64) if h is None else weights[h].astype(np.float64)


@dataclass
class KeepMask:
    """A record's keep mask brought to one head: over key columns or over map cells."""

    over: Literal["columns", "cells"]
    mask: np.ndarray  # bool [Tk] or [Tq, Tk]


def head_keep(record: AttentionRecord, head: Head) -> KeepMask | None:
    """The keep mask of one head (for 'mean': kept by at least half of the heads, the one meaning
    of "kept" on every page, ``ser_core.kept``); None if none fits.

    Key-sparse records keep ``[heads, Tk]`` (columns); nucleus records keep points of the map
    they mask (``[heads, Tq, Tk]`` or ``[Tq, Tk]``, cells).
    """
    weights = _check_record(record)
    if record.keep is None:
        return None
    keep = np.asarray(record.keep, dtype=bool)
    n_heads, tq, tk = weights.shape
    h = _head_index(record, head)

    def pick(per_head: np.ndarray) -> np.ndarray:
        return most_heads(per_head) if h is None else per_head[h]

    tk = len(record.key_labels)  # a keep mask over keys is whole even when the map is pooled
    if keep.shape == (n_heads, tk):
        return KeepMask("columns", pick(keep))
    if keep.shape == (tk,):
        return KeepMask("columns", keep)
    if record.pooled:  # a mask per map point indexes the full map only
        return None
    if keep.shape == (n_heads, tq, tk):
        return KeepMask("cells", pick(keep))
    if keep.shape == (tq, tk):
        return KeepMask("cells", keep)
    return None


def head_key_scores(record: AttentionRecord, head: Head) -> tuple[np.ndarray, np.ndarray | None]:
    """Key scores [Tk] of one head (or their mean) and the kept-key mask [Tk] (or None).

    The key score of key z is Σ_q W[q, z] (KS-Transformer, the column sum that ranks keys).
    Records without stored scores fall back to column sums of their weights.
    """
    weights = _check_record(record)
    h = _head_index(record, head)
    if record.key_scores is not None:
        scores = np.asarray(record.key_scores, dtype=np.float64)
        if scores.ndim == 1:
            scores = scores[None, :]
        if scores.shape[-1] != len(record.key_labels):
            raise InputError(
                f"Record {record.name!r} has {scores.shape[-1]} key scores for "
                f"{len(record.key_labels)} keys."
            )
    elif record.pooled:
        raise InputError(f"Record {record.name!r} keeps only a pooled map and no key scores.")
    else:
        scores = weights.sum(axis=1, dtype=np.float64)
    if scores.shape[0] == 1:
        chosen = scores[0]
    else:
        chosen = scores.mean(axis=0) if h is None else scores[h]
    keep = head_keep(record, head)
    kept = None
    if keep is not None:
        kept = keep.mask if keep.over == "columns" else keep.mask.any(axis=0)
    return chosen, kept


def top_k_threshold(scores: np.ndarray, keep_ratio: float) -> tuple[float, int]:
    """The n-th largest score with n = max(1, ⌊keep_ratio·L⌋) (key-sparse top-k), and n."""
    scores = np.asarray(scores, dtype=np.float64)
    length = scores.shape[0]
    n = length if keep_ratio >= 1 else max(1, math.floor(keep_ratio * length + 1e-9))
    n = min(n, length)
    return float(np.sort(scores)[::-1][n - 1]), n


# --------------------------------------------------------------------------- axes


@dataclass
class _Axis:
    """Positions and labels of one map axis, ready for plotly."""

    positions: np.ndarray  # centres (seconds on a time axis, indices otherwise)
    widths: np.ndarray  # cell widths in the same unit
    hover: np.ndarray  # str per position: label and time
    title: str
    is_time: bool
    names: list[str]

    @property
    def lo(self) -> float:
        return float(self.positions[0] - self.widths[0] / 2)

    @cached_property
    def categories(self) -> list[str]:
        """The hover labels made unique (a repeated word gets " #2", " #3"…): a word axis drawn
        as categories shows its word on hover without a text per cell (made once per axis)."""
        seen: set[str] = set()
        out = []
        for label in self.hover:
            unique, n = str(label), 1
            while unique in seen:
                n += 1
                unique = f"{label} #{n}"
            seen.add(unique)
            out.append(unique)
        return out

    @property
    def hi(self) -> float:
        return float(self.positions[-1] + self.widths[-1] / 2)


def _fmt_time(t: float) -> str:
    return f"{t:.2f} s"


def _times(labels: AxisLabels) -> tuple[np.ndarray, np.ndarray] | None:
    """Start/end seconds of each position, or None when the axis has no times."""
    if labels.start is None:
        return None
    start = np.asarray(labels.start, dtype=np.float64).reshape(-1)
    if start.shape[0] != len(labels):
        return None
    if labels.end is not None and np.asarray(labels.end).reshape(-1).shape[0] == len(labels):
        end = np.asarray(labels.end, dtype=np.float64).reshape(-1)
    else:
        step = np.diff(start)
        last = step[-1] if step.size else 0.02
        end = start + np.append(step, last)
    return start, end


def _axis(labels: AxisLabels, role: str, block: int = 1) -> _Axis:
    """Build an axis; ``block`` > 1 pools consecutive positions (for downsampled maps)."""
    n = len(labels)
    times = _times(labels)
    groups = [range(i, min(i + block, n)) for i in range(0, n, block)]
    names = [str(x) for x in labels.names]
    if block == 1:
        group_names = names
    else:
        group_names = [
            names[g[0]] if len(g) == 1 else f"{names[g[0]]}…{names[g[-1]]}" for g in groups
        ]
    if times is not None:
        start, end = times
        g_start = np.array([start[g[0]] for g in groups])
        g_end = np.array([end[g[-1]] for g in groups])
        span = [f"{_fmt_time(s)}–{_fmt_time(e)}" for s, e in zip(g_start, g_end)]
    if times is not None and labels.kind != "words":
        return _Axis(
            positions=(g_start + g_end) / 2,
            widths=np.maximum(g_end - g_start, 1e-6),
            hover=np.array(span if block > 1 else [_fmt_time(s) for s in g_start]),
            title=f"{role} time (s)",
            is_time=True,
            names=group_names,
        )
    hover = group_names if times is None else [f"{w} ({s})" for w, s in zip(group_names, span)]
    return _Axis(
        positions=np.arange(len(groups), dtype=np.float64),
        widths=np.ones(len(groups)),
        hover=np.array(hover, dtype=object).astype(str),
        title=f"{role} {labels.kind}",
        is_time=False,
        names=group_names,
    )


def _axis_layout(axis: _Axis, reversed_: bool = False, categorical: bool = False) -> dict:
    """Plotly axis settings; ``categorical``: the data on a word axis are ``axis.categories``."""
    out: dict = {"title": {"text": axis.title}}
    if axis.is_time:
        out["range"] = [axis.hi, axis.lo] if reversed_ else [axis.lo, axis.hi]
    else:
        n = len(axis.names)
        stride = max(1, math.ceil(n / 60))
        idx = list(range(0, n, stride))
        if categorical:
            cats = axis.categories
            out.update(type="category", categoryorder="array", categoryarray=cats)
        out.update(
            tickmode="array",
            tickvals=[cats[i] if categorical else float(axis.positions[i]) for i in idx],
            ticktext=[axis.names[i] for i in idx],
            range=[axis.hi, axis.lo] if reversed_ else [axis.lo, axis.hi],
        )
        if n > 8:
            out["tickangle"] = -45
    return out


def max_pool_2d(z: np.ndarray, block_q: int, block_k: int) -> np.ndarray:
    """Max over non-overlapping block_q×block_k blocks (partial edge blocks included)."""
    tq, tk = z.shape
    nq, nk = math.ceil(tq / block_q), math.ceil(tk / block_k)
    padded = np.full((nq * block_q, nk * block_k), -np.inf, dtype=np.float64)
    padded[:tq, :tk] = z
    return padded.reshape(nq, block_q, nk, block_k).max(axis=(1, 3))


def _any_pool_1d(mask: np.ndarray, block: int) -> np.ndarray:
    n = mask.shape[0]
    padded = np.zeros(math.ceil(n / block) * block, dtype=bool)
    padded[:n] = mask
    return padded.reshape(-1, block).any(axis=1)
