"""Attributions on the trace's word and frame axes: Integrated Gradients, gradient × input and
attention rollout — the model-independent part (methods, result, rollout maths, cache keys).

    analysis = Analyzer().analyze("clip.wav")
    analysis.attribution("integrated_gradients")  # {"words": [n_words] | None, "frames": [n_frames] | None}
    analysis.attribution("input_x_gradient")
    analysis.attribution("rollout")

One score per word and one per speech frame, on the axes the trace's records use (see
:func:`attribution_axes`), so a view can lay them beside the attention. A model that hears no
words (MESM's single sentence vector, ILT, CAT, MFSN) returns ``words=None``. Which tensors of
each model are attributed, how they are reduced to these axes, how words / frames are dropped
(``ser_core.deletion``) and each model's rollout graph live in ``ser_core.attribution_inputs``
(``model_adapter``, re-exported here).

What is attributed
    The predicted class's *probability* (softmax output), at the analysis's own setting
    (keep_ratio / top_p / model options): the same number the deletion test (``ser_core.deletion``)
    watches fall. Integrated Gradients (Sundararajan et al. 2017) and gradient × input
    (Shrikumar et al. 2016) come from Captum (``captum.attr.IntegratedGradients`` /
    ``InputXGradient``). IG's baseline is **all zeros** on every attributed input, which is
    what padding looks like to these models (see ``ser_core.attribution_inputs``); its path
    integral is approximated with Captum's Gauss–Legendre rule over ``n_steps`` points (default
    :data:`DEFAULT_STEPS`; 48 for ILT / CAT), all steps in one batch (``internal_batch_size``
    splits it for long clips). Completeness: the scores of *all* attributed inputs sum to f(x) − f(baseline) up to
    ``Attribution.delta`` (computed directly: sum − (f(x) − f(0)), what Captum's convergence
    delta is). Key-sparse top-k, MESM's nucleus masks and ReLUs make f piecewise along the
    path: where a kept set changes, f jumps and IG cannot see the jump, so delta grows at
    keep_ratio < 1 (it is small at keep_ratio = 1).

Rollout (Abnar & Zuidema 2020)
    Each layer's head-averaged attention A becomes 0.5·A + 0.5·I (the residual), rows
    renormalised, and the layers are multiplied in the order the model applies them
    (:func:`rollout_matrix`). The result is read where the classifier reads (the pooled rows)
    and returned as shares (words + frames sum to 1); the per-model graphs are in
    ``ser_core.attribution_inputs``.

Axes
    ``words``: one per ``Features.words`` entry (the trace's "words" axis; an utterance without
    words gives an empty array, not the "<no words>" placeholder). ``frames``: the trace's
    frame axis named in :data:`FRAME_AXES` (KS "audio", MFSN "sec", ILT "cnn", CAT "lstm",
    MESM "spectrogram" chunks): the key axis of the record the Analyze page shades on the
    waveform.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from .errors import InputError
from .trace import AttentionRecord, AttentionTrace, AxisLabels

__all__ = [
    "DEFAULT_STEPS",
    "GLOBAL_HOOKS",
    "FRAME_AXES",
    "METHODS",
    "Attribution",
    "attribution_axes",
    "compute_attribution",
    "kept_share",
    "points_on_grid",
    "project_by_time",
    "record_key_scores",
    "rollout_matrix",
    "setting_key",
]  # model_adapter: see __getattr__ below

METHODS = ("integrated_gradients", "input_x_gradient", "rollout")
#: Held while gradients are computed here and while ``model_card.count_flops`` counts FLOPs: its
#: FlopCounterMode installs *global* module hooks that, in every thread, put gradient hooks on each
#: module input that requires grad, and a gradient attribution in another thread then fails inside
#: ``torch.autograd.grad`` ("A leaf node was passed to _will_engine_execute_node ..."; seen when the
#: server's warm-up made the Models page's cards while a visitor ran the deletion test).
GLOBAL_HOOKS = threading.RLock()
DEFAULT_STEPS = 16  # Gauss–Legendre points (ILT / CAT: 48, see attribution_inputs._LogMelAdapter.default_steps)
#: The modality (``model_axis_labels`` key) of each model's frame axis.
FRAME_AXES = {"ks_transformer": "audio", "mfsn": "sec", "ilt": "cnn", "cat": "lstm",
              "mesm": "spectrogram", "fe2e": "spectrogram"}


@dataclass
class Attribution:
    """One attribution of one utterance at one setting.

    words / frames: scores on the trace's axes (None where the model has no such axis).
    target: the attributed class index (the prediction); label its short name.
    f_input / f_baseline: the predicted class's probability at the input / at the all-zero
    baseline; total: the sum of every attributed input's scores (IG: ≈ f_input − f_baseline);
    delta = total − (f_input − f_baseline) (IG only). seconds: the compute time.
    """

    method: str
    words: np.ndarray | None
    frames: np.ndarray | None
    target: int
    label: str
    f_input: float | None = None
    f_baseline: float | None = None
    total: float | None = None
    delta: float | None = None
    n_steps: int | None = None
    seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, np.ndarray | None]:
        return {"words": None if self.words is None else self.words.copy(),
                "frames": None if self.frames is None else self.frames.copy()}


def setting_key(keep_ratio: Any, top_p: Any, options: dict[str, Any] | None = None) -> str:
    """A hashable, order-independent name of a model setting (for caches)."""
    return json.dumps({"keep_ratio": keep_ratio, "top_p": top_p, "options": options or {}},
                      sort_keys=True, default=str)


# --------------------------------------------------------------------------- helpers

def rollout_matrix(maps: list[np.ndarray]) -> np.ndarray:
    """Abnar & Zuidema's rollout of self-attention maps applied in order: Π (0.5·A + 0.5·I),
    rows renormalised, later layers on the left. Each map [heads, T, T] or [T, T]."""
    R: np.ndarray | None = None
    for A in maps:
        A = _head_mean(A)
        step = _residual(A)
        R = step if R is None else step @ R
    if R is None:
        raise ValueError("rollout needs at least one map")
    return R


def _head_mean(A: np.ndarray) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    return A.mean(axis=0) if A.ndim == 3 else A


def _residual(A: np.ndarray) -> np.ndarray:
    """0.5·A + 0.5·I with rows renormalised (the residual connection)."""
    return _rows(0.5 * A + 0.5 * np.eye(A.shape[0]))


def _rows(M: np.ndarray) -> np.ndarray:
    s = M.sum(axis=-1, keepdims=True)
    return M / np.where(s > 0, s, 1.0)


def project_by_time(values: np.ndarray, source: AxisLabels, target: AxisLabels) -> np.ndarray:
    """Spread scores on one time axis onto another: each source position's value is shared
    among the target positions its [start, end) span overlaps, by overlap length (a source
    position that overlaps none goes to the nearest target position)."""
    values = np.asarray(values, dtype=np.float64)
    if source.start is None or target.start is None:
        raise ValueError("both axes need start/end times")
    s0, s1 = np.asarray(source.start, float), np.asarray(source.end, float)
    t0, t1 = np.asarray(target.start, float), np.asarray(target.end, float)
    overlap = np.clip(np.minimum(s1[:, None], t1[None, :]) - np.maximum(s0[:, None], t0[None, :]), 0, None)
    tot = overlap.sum(axis=1, keepdims=True)
    centres_s, centres_t = (s0 + s1) / 2, (t0 + t1) / 2
    share = np.where(tot > 0, overlap / np.where(tot > 0, tot, 1.0), 0.0)
    for i in np.flatnonzero(tot[:, 0] <= 0):
        share[i, int(np.argmin(np.abs(centres_t - centres_s[i])))] = 1.0
    return values @ share


def _assign_times(times: np.ndarray, target: AxisLabels) -> np.ndarray:
    """Index of the target position whose span holds each time (nearest span outside them)."""
    starts = np.asarray(target.start, dtype=np.float64)
    idx = np.searchsorted(starts, np.asarray(times, dtype=np.float64), side="right") - 1
    return np.clip(idx, 0, len(starts) - 1)


def record_key_scores(record: AttentionRecord) -> tuple[np.ndarray, np.ndarray | None]:
    """A record's importance per key as the page shows it: the mean over heads of its key scores
    (column sums of the weights where the model stored none), and the keys kept by at least
    half of the heads (None when the record drops nothing per key)."""
    if record.key_scores is not None:
        scores = np.asarray(record.key_scores, dtype=np.float64).mean(axis=0)
    else:
        scores = np.asarray(record.weights, dtype=np.float64).mean(axis=0).sum(axis=0)
    kept = None
    if record.keep is not None and np.asarray(record.keep).ndim == 2:
        kept = np.asarray(record.keep).mean(axis=0) >= 0.5
    return scores, kept


def _layer_names(recs: dict[str, AttentionRecord], prefix: str) -> list[str]:
    """``prefix.0``, ``prefix.1``, ... in layer order."""
    found = [n for n in recs if n.startswith(prefix + ".") and n[len(prefix) + 1:].isdigit()]
    return sorted(found, key=lambda n: int(n[len(prefix) + 1:]))


@contextlib.contextmanager
def _hooks(handles_factory: Callable[[], list]):
    handles = handles_factory()
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------- adapters

def __getattr__(name: str) -> Any:
    """``model_adapter`` and ``_Adapter`` are importable from here as before; they live in
    ``attribution_inputs``, which imports this module, so they are fetched on first use."""
    if name in ("model_adapter", "_Adapter"):
        from . import attribution_inputs
        return getattr(attribution_inputs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def attribution_axes(model: nn.Module, feats: Any) -> dict[str, AxisLabels | None]:
    """The AxisLabels that the ``words`` / ``frames`` scores index (None: no such axis)."""
    from .attribution_inputs import model_adapter

    return model_adapter(model, feats).axes()


# --------------------------------------------------------------------------- the methods

@contextlib.contextmanager
def _gradients_on(model: nn.Module):
    """Gradients w.r.t. the inputs only: parameters frozen for the call, cuDNN's RNN off (its
    backward refuses eval mode), inference mode off."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            yield
    finally:
        for p, was in flags:
            p.requires_grad_(was)


def compute_attribution(
    model: nn.Module,
    feats: Any,
    trace: AttentionTrace,
    target: int,
    label: str,
    method: str = "integrated_gradients",
    setting: dict[str, Any] | None = None,
    n_steps: int | None = None,
    internal_batch_size: int | None = None,
    device: torch.device | str = "cpu",
) -> Attribution:
    """One attribution (see the module docstring); ``setting`` = {"keep_ratio", "top_p",
    "options"} of the analysis. Callers hold the model's lock (``Analyzer`` does)."""
    from .attribution_inputs import model_adapter

    if method not in METHODS:
        raise InputError(f"Unknown attribution method {method!r}; use one of {list(METHODS)}.")
    setting = setting or {}
    t0 = time.perf_counter()
    adapter = model_adapter(model, feats, device)
    n_steps = int(n_steps or adapter.default_steps)
    if method == "rollout":
        if any(r.pooled for r in trace.records):  # a long clip's maps, kept at display resolution
            raise InputError("Attention rollout needs the full attention maps, and this clip's are kept "
                             "only at display resolution (it is longer than explanations accept).")
        words, frames = adapter.rollout(trace, setting)
        return Attribution(method, _check(words, adapter.n_words), _check(frames, adapter.n_frames),
                           target, label, seconds=time.perf_counter() - t0)

    from captum.attr import InputXGradient, IntegratedGradients  # heavy import: only when used

    with GLOBAL_HOOKS, _gradients_on(model):
        sources = adapter.capture(setting)
        xs = tuple(s.value for s in sources)

        def f(*inputs: Tensor) -> Tensor:
            return adapter.run_with(sources, inputs, setting)

        extras: dict[str, Any] = {}
        if method == "integrated_gradients":
            baselines = tuple(torch.zeros_like(x) for x in xs)
            attrs = IntegratedGradients(f).attribute(
                xs, baselines=baselines, target=target, n_steps=n_steps,
                internal_batch_size=internal_batch_size)
            with torch.no_grad():
                ends = f(*(torch.cat([x, b]) for x, b in zip(xs, baselines)))[:, target]
            f_x, f_0 = float(ends[0]), float(ends[1])
        else:
            with warnings.catch_warnings():  # "did not already require gradients": set on purpose
                warnings.simplefilter("ignore", UserWarning)
                attrs = InputXGradient(f).attribute(xs, target=target)
            with torch.no_grad():
                f_x, f_0 = float(f(*xs)[0, target]), None
        attrs = {s.name: a.detach() for s, a in zip(sources, attrs)}
    total = float(sum(float(a.sum()) for a in attrs.values()))
    words, frames = adapter.reduce(attrs)
    extras["per_input"] = {k: float(v.sum()) for k, v in attrs.items()}
    points = adapter.point_maps(attrs)
    if points:
        extras["points"] = points  # by query modality; see points_on_grid
    ig = method == "integrated_gradients"
    return Attribution(
        method, _check(words, adapter.n_words), _check(frames, adapter.n_frames), target, label,
        f_input=f_x, f_baseline=f_0, total=total,
        delta=(total - (f_x - f_0)) if ig and f_0 is not None else None,
        n_steps=n_steps if ig else None, seconds=time.perf_counter() - t0, extras=extras,
    )


def _check(values: np.ndarray | None, n: int | None) -> np.ndarray | None:
    if n is None or values is None:
        return None
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.shape[0] != n:
        raise RuntimeError(f"attribution has {values.shape[0]} scores for an axis of {n}")
    return values


def points_on_grid(points: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """One input's point scores [H0, W0] summed over the cells of a coarser [H, W] grid laid
    evenly over it (a sparse layer's feature map: each cell covers H0/H × W0/W input points)."""
    points = np.asarray(points, dtype=np.float64)
    (h0, w0), (h, w) = points.shape, grid
    if h < 1 or w < 1 or h0 % h or w0 % w:
        raise InputError(f"A {h} × {w} grid does not tile the {h0} × {w0} input evenly.")
    return points.reshape(h, h0 // h, w, w0 // w).sum(axis=(1, 3))


def kept_share(scores: np.ndarray, keep: np.ndarray) -> tuple[float, float]:
    """(share of the attribution's magnitude Σ|score| on the kept cells, share of cells kept):
    a mask that keeps what changes the prediction holds more of the first than of the second."""
    magnitude = np.abs(np.asarray(scores, dtype=np.float64))
    keep = np.asarray(keep, dtype=bool)
    if magnitude.shape != keep.shape:
        raise InputError(f"Scores {magnitude.shape} and keep mask {keep.shape} differ in shape.")
    total = float(magnitude.sum())
    return (float(magnitude[keep].sum()) / total if total > 0 else 0.0), float(keep.mean())
