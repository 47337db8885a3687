"""Deletion test: is what the attention (or an attribution) ranks first what the model needs?

For one utterance at one setting, each *ranking* orders the words and, separately, the speech
frames from most to least important:

* ``attention``: the attention the Analyze page shows: the key scores of the chosen layer (mean
  over heads; keys kept by at least half of the heads first), when that layer's keys lie on the
  axis; otherwise the page's default record for the axis (the word view's / the waveform's
  record: the first record keyed on words / frames, preferring one with a keep mask). Keys on
  another time axis (e.g. CAT's CNN steps) are spread onto the frame axis by time. MESM's
  attention chooses points *inside* each 400 ms chunk, never whole chunks: no attention ranking
  there;
* ``integrated_gradients``, ``input_x_gradient``, ``rollout``: the scores of
  ``ser_core.attribution`` (largest first);
* ``random``: a seeded random permutation (the same for every setting of one utterance).

The top 10, 20, … 50 % of the ranking (:data:`STEPS`; ⌊share × length⌋ positions, at least
one, never all; a short axis has fewer distinct steps) are removed and the model is re-run on the
cached features. *Removed* means: marked as padding in the collated batch, so every attention
layer skips them as keys and every pooling ignores them, exactly like the padding of a shorter
utterance in a batch (KS-Transformer: ``audio_mask`` / ``text_mask``; MFSN: ``frame_mask``, with
the spectrogram and MFCC frames inside a removed frame set to padding's value 0; MESM:
``chunk_mask``). ILT and CAT accept padding only at the end of an utterance, so a removed
frame's log-mels are set to the value padding has at the CNN's input (0 after the input batch
norm) instead. Besides the curves, the exact set of keys the attention layer kept (by most
heads) and as many random positions are removed once each, for :meth:`DeletionResult.sentence`.

Cost: every distinct removal runs once, without gradient, batched (all word removals together,
frame removals by size); removals already run for this utterance and setting are reused
(``known``), so switching the layer re-runs only that layer's attention removals. For the
KS-Transformer, word removals reuse the utterance's audio stream, and frame removals leave the
removed frames out of the sequence (same result as masking, less work; see
``attribution._SpeechTextAdapter``).

Reported per ranking and axis: the predicted class's probability against the share removed,
and AOPC (area over the perturbation curve, Samek et al. 2017) = mean over the steps of
p(original) − p(after removing the top x %). A faithful ranking has a high AOPC: removing what
it ranks first hurts the prediction more than removing random positions does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .attribution import Attribution, project_by_time, record_key_scores
from .attribution_inputs import _Adapter, model_adapter
from .data.base import LABEL_NAMES
from .errors import InputError
from .trace import AttentionRecord, AttentionTrace, AxisLabels

__all__ = ["AXIS_NAMES", "DEFAULT_RANKINGS", "QUICK_RANKINGS", "RANKINGS", "RANKING_NAMES", "STEPS",
           "DeletionCurve", "DeletionResult", "attention_ranking", "run_deletion_test"]

STEPS = (0.1, 0.2, 0.3, 0.4, 0.5)
RANKINGS = ("attention", "integrated_gradients", "input_x_gradient", "rollout", "random")
DEFAULT_RANKINGS = RANKINGS
#: What the page's sentence needs: the attention ranking against random (about a dozen model runs,
#: no gradients); the Analyze page shows these first, then every ranking.
QUICK_RANKINGS = ("attention", "random")
AXES = ("words", "frames")


@dataclass
class DeletionCurve:
    """One ranking's curve on one axis: ``probs[i]`` = p(predicted class) after removing the
    ``counts[i]`` top-ranked positions (``shares[i]`` of the axis)."""

    axis: str
    ranking: str
    order: np.ndarray  # positions, most important first
    counts: np.ndarray
    shares: np.ndarray
    probs: np.ndarray
    p_orig: float

    @property
    def aopc(self) -> float:
        """Mean over the steps of p(original) − p(after removal)."""
        return float(np.mean(self.p_orig - self.probs)) if len(self.probs) else 0.0

    def removed(self, count: int) -> np.ndarray:
        return np.sort(self.order[:count])


@dataclass
class DeletionResult:
    """Every curve of one utterance's deletion test (see the module docstring)."""

    label: str
    target: int
    p_orig: float
    axes: dict[str, AxisLabels]
    curves: list[DeletionCurve]
    attention_layers: dict[str, str] = field(default_factory=dict)  # axis → record used
    kept: dict[str, np.ndarray | None] = field(default_factory=dict)  # axis → kept by most heads
    # axis → {"count": n, "attention": p, "random": p or None}: removing exactly the n keys the
    # layer kept (by most heads), and n random ones (what the sentence reports when there is one)
    kept_removal: dict[str, dict[str, Any]] = field(default_factory=dict)
    primary_axis: str | None = None
    seconds: float = 0.0
    forward_items: int = 0  # removals this call ran (others came from earlier calls)

    @property
    def emotion(self) -> str:
        return LABEL_NAMES.get(self.label, self.label)

    def curve(self, axis: str, ranking: str) -> DeletionCurve | None:
        return next((c for c in self.curves if c.axis == axis and c.ranking == ranking), None)

    def rankings(self, axis: str) -> list[str]:
        return [c.ranking for c in self.curves if c.axis == axis]

    def aopc(self, axis: str) -> dict[str, float]:
        return {c.ranking: c.aopc for c in self.curves if c.axis == axis}

    def sentence(self, axis: str | None = None) -> str:
        """One plain sentence: what removing the top-ranked positions does, beside random."""
        axis = axis or self.primary_axis
        if axis is None or axis not in self.axes:
            return "There is nothing to remove in this clip (too few words and frames)."
        ranking = "attention" if self.curve(axis, "attention") else "integrated_gradients"
        main = self.curve(axis, ranking) or next((c for c in self.curves if c.axis == axis), None)
        if main is None:
            return "No ranking was tested on this axis."
        rand = self.curve(axis, "random")
        exact = self.kept_removal.get(axis) if main.ranking == "attention" else None
        if exact is not None:  # exactly the keys the layer kept, and as many random ones
            n, p1, p_rand = int(exact["count"]), float(exact["attention"]), exact.get("random")
            removed, who = main.removed(n), "this layer kept"
        else:  # the middle step of the curve
            i = len(main.counts) // 2
            n, p1 = int(main.counts[i]), float(main.probs[i])
            p_rand = float(rand.probs[i]) if rand is not None and i < len(rand.probs) else None
            removed = main.removed(n)
            who = ("this layer ranks highest" if main.ranking == "attention"
                   else f"{RANKING_NAMES[main.ranking]} ranks highest")
        what = _what(self.axes[axis], n, removed)
        p0 = self.p_orig
        if p1 < p0 - 0.005:
            effect = f"lowers the probability of {self.emotion} from {_pct(p0)} to {_pct(p1)}"
        elif p1 > p0 + 0.005:
            effect = f"raises the probability of {self.emotion} from {_pct(p0)} to {_pct(p1)}"
        else:
            effect = f"leaves the probability of {self.emotion} at {_pct(p1)}"
        text = f"Removing {what} {who} {effect}"
        if p_rand is not None:
            unit = _unit(self.axes[axis], n)
            text += f"; removing {n} random {unit}: to {_pct(float(p_rand))}"
            drop_main, drop_rand = p0 - p1, p0 - float(p_rand)
            if drop_main > drop_rand + 0.05:
                text += " — so the model does rely on what this ranking points at"
            elif drop_main < drop_rand - 0.05:
                text += " — random removal hurts more, so this ranking does not show what the model relies on"
            else:
                text += " — about the same, so this ranking says little about what the model relies on"
        return text + "."


#: What is removed on each kind of axis, in the words the views use.
AXIS_NAMES = {"words": "words", "frames": "speech frames", "chunks": "400 ms chunks"}
RANKING_NAMES = {"attention": "attention", "integrated_gradients": "Integrated Gradients",
                 "input_x_gradient": "gradient × input", "rollout": "attention rollout", "random": "random"}


def _pct(p: float) -> str:
    return f"{100 * p:.0f} %"


def _unit(labels: AxisLabels, n: int) -> str:
    base = {"words": "word", "chunks": "chunk"}.get(labels.kind, "speech frame")
    return base if n == 1 else base + "s"


def _what(labels: AxisLabels, n: int, removed: np.ndarray) -> str:
    """"the 3 words (“livid”, “exam”, “all”)" / "the 40 speech frames (0.80 s)"."""
    unit = _unit(labels, n)
    if labels.kind == "words":
        words = [labels.names[i] for i in removed[:4]]
        listed = ", ".join(f"“{w}”" for w in words) + (", …" if n > 4 else "")
        return f"the {n} {unit} ({listed})" if n > 1 else f"the word “{words[0]}”"
    if labels.start is not None and labels.end is not None:
        seconds = float(np.sum(np.asarray(labels.end)[removed] - np.asarray(labels.start)[removed]))
        return f"the {n} {unit} ({seconds:.2f} s of audio)" if n > 1 else f"the {unit} at {labels.names[removed[0]]}"
    return f"the {n} {unit}" if n > 1 else f"the {unit}"


# --------------------------------------------------------------------------- attention ranking

def _first_record(trace: AttentionTrace, key_kind: str) -> AttentionRecord | None:
    """The page's default record for an axis: the first whose keys are ``key_kind``, preferring
    one with a keep mask (as ``ui.first_record``)."""
    candidates = [r for r in trace.records if r.key_labels.kind == key_kind]
    kept = [r for r in candidates if r.keep is not None]
    candidates = kept or candidates
    return candidates[0] if candidates else None


def _on_axis(record: AttentionRecord, axis: str, adapter: _Adapter, axes: dict[str, AxisLabels]
             ) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The record's key scores (and kept keys) on one of the test's axes, or None."""
    target = axes.get(axis)
    if target is None:
        return None
    scores, kept = record_key_scores(record)
    keys = record.key_labels
    n = len(target)
    own = adapter.words_axis if axis == "words" else adapter.frames_axis
    if record.key_modality == own and len(scores) == n:
        return scores, kept
    frames = axes.get("frames")
    if keys.kind == "fused" and frames is not None and keys.names[: len(frames)] == frames.names:
        lo = 0 if axis == "frames" else len(frames)
        if lo + n <= len(scores) and (axis == "frames" or keys.names[lo: lo + n] == target.names):
            return scores[lo: lo + n], None if kept is None else kept[lo: lo + n]
    if axis == "frames" and keys.kind in ("frames", "chunks") and keys.start is not None \
            and target.start is not None and record.key_modality != "visual":
        projected = project_by_time(scores, keys, target)
        kept_p = None if kept is None else project_by_time(kept.astype(float), keys, target) >= 0.5
        return projected, kept_p
    return None


def attention_ranking(trace: AttentionTrace, adapter: _Adapter, axes: dict[str, AxisLabels],
                      layer: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray | None, str]]:
    """{axis: (order, kept or None, record name)}: positions ordered kept-first, then by key
    score, from ``layer`` where its keys lie on the axis, else from the page's default record."""
    chosen = None
    if layer is not None:
        try:
            chosen = trace[layer]
        except KeyError:
            raise InputError(f"{trace.model} has no attention layer {layer!r}.") from None
    out = {}
    for axis in axes:
        candidates = [chosen] if chosen is not None else []
        kind = "words" if axis == "words" else axes[axis].kind
        default = _first_record(trace, kind)
        if default is not None:
            candidates.append(default)
        for rec in candidates:
            got = _on_axis(rec, axis, adapter, axes)
            if got is None:
                continue
            scores, kept = got
            out[axis] = (_order(scores, kept), kept, rec.name)
            break
    return out


def _order(scores: np.ndarray, kept: np.ndarray | None = None) -> np.ndarray:
    """Positions by importance: kept ones first (when given), then by score, ties by position."""
    scores = np.asarray(scores, dtype=np.float64)
    idx = np.arange(len(scores))
    primary = np.zeros(len(scores)) if kept is None else (~np.asarray(kept, bool)).astype(float)
    return np.lexsort((idx, -np.nan_to_num(scores, nan=-np.inf), primary))


# --------------------------------------------------------------------------- the test

def _counts(L: int, steps: tuple[float, ...]) -> np.ndarray:
    """Positions removed at each step: ⌊f·L⌋, at least one, never all (repeats merged)."""
    return np.unique([min(max(int(np.floor(f * L + 1e-9)), 1), L - 1) for f in steps])


def run_deletion_test(
    model: torch.nn.Module,
    feats: Any,
    trace: AttentionTrace,
    target: int,
    label: str,
    p_orig: float,
    attributions: dict[str, Attribution],
    setting: dict[str, Any] | None = None,
    layer: str | None = None,
    rankings: tuple[str, ...] = DEFAULT_RANKINGS,
    steps: tuple[float, ...] = STEPS,
    seed: int = 0,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    known: dict[tuple[str, bytes], float] | None = None,
) -> DeletionResult:
    """Run the deletion test (module docstring). ``attributions``: the already computed
    Attribution of each attribution ranking asked for. ``known``: p(target) of removals already
    run for this utterance and setting ({(axis, sorted positions' bytes): p}); read and filled,
    so another layer re-runs only its own attention removals. Callers hold the model's lock."""
    unknown = [r for r in rankings if r not in RANKINGS]
    if unknown:
        raise InputError(f"Unknown ranking(s) {unknown}; use {list(RANKINGS)}.")
    if not steps or any(not 0 < f < 1 for f in steps):
        raise InputError("Deletion steps must be shares strictly between 0 and 1.")
    t0 = time.perf_counter()
    setting = setting or {}
    adapter = model_adapter(model, feats, device)
    axes = {k: v for k, v in adapter.axes().items() if v is not None and len(v) >= 2}
    att = attention_ranking(trace, adapter, axes, layer) if "attention" in rankings else {}

    orders: dict[tuple[str, str], np.ndarray] = {}
    for a_i, axis in enumerate(AXES):
        if axis not in axes:
            continue
        L = len(axes[axis])
        for r in rankings:
            if r == "attention":
                if axis in att:
                    orders[(axis, r)] = att[axis][0]
            elif r == "random":
                orders[(axis, r)] = np.random.default_rng([seed, a_i]).permutation(L)
            else:
                scores = getattr(attributions.get(r), axis, None)
                if scores is not None and len(scores) == L:
                    orders[(axis, r)] = _order(scores)

    # every distinct removal, once
    rows: dict[tuple[str, bytes], int] = {}
    plan: list[tuple[str, str, np.ndarray, list[int]]] = []
    drops: list[tuple[str, np.ndarray]] = []
    for (axis, r), order in orders.items():
        counts = _counts(len(axes[axis]), steps)
        idx = []
        for c in counts:
            key = (axis, np.sort(order[:c]).tobytes())
            if key not in rows:
                rows[key] = len(drops)
                drops.append((axis, np.sort(order[:c])))
            idx.append(rows[key])
        plan.append((axis, r, counts, idx))
    # the exact kept set of the attention layer (and as many random positions), for the sentence
    extra: dict[str, dict[str, int]] = {}
    for axis, (order, kept, _) in att.items():
        n_kept = 0 if kept is None else int(np.sum(kept))
        if not 0 < n_kept < len(axes[axis]):
            continue
        extra[axis] = {}
        for r in ("attention", "random"):
            if (axis, r) not in orders:
                continue
            removed = np.sort(orders[(axis, r)][:n_kept])
            key = (axis, removed.tobytes())
            if key not in rows:
                rows[key] = len(drops)
                drops.append((axis, removed))
            extra[axis][r] = rows[key]
        extra[axis]["count"] = n_kept

    probs = np.zeros(len(drops))
    known = {} if known is None else known
    keys = [(axis, removed.tobytes()) for axis, removed in drops]
    # one batch per group: every word removal together; frame removals by size, which a model may
    # run as one shorter sequence (KS-Transformer leaves removed frames out instead of masking them)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, k in enumerate(keys):
        if k not in known:
            axis, removed = drops[i]
            groups.setdefault((axis, len(removed) if axis == "frames" else 0), []).append(i)
    todo = [i for g in sorted(groups) for i in groups[g]]
    batches = [g_rows[lo: lo + batch_size] for g in sorted(groups) for g_rows in [groups[g]]
               for lo in range(0, len(g_rows), batch_size)]
    for i, k in enumerate(keys):
        if k in known:
            probs[i] = known[k]
    nw = len(axes["words"]) if "words" in axes else None
    nf = len(axes["frames"]) if "frames" in axes else None
    # an axis that exists but is too short to test still needs its (empty) drop mask
    nw = nw if nw is not None else (adapter.n_words or None)
    nf = nf if nf is not None else (adapter.n_frames or None)
    with torch.inference_mode():
        for chunk in batches:
            w = torch.zeros(len(chunk), nw, dtype=torch.bool) if nw else None
            f = torch.zeros(len(chunk), nf, dtype=torch.bool) if nf else None
            for i, row in enumerate(chunk):
                axis, removed = drops[row]
                (w if axis == "words" else f)[i, torch.as_tensor(removed)] = True
            p = adapter.run_dropped(w, f, setting)[:, target].float().cpu().numpy()
            for i, row in enumerate(chunk):
                probs[row] = known[keys[row]] = float(p[i])

    curves = []
    for axis, r, counts, idx in plan:
        curves.append(DeletionCurve(axis, r, orders[(axis, r)], counts, counts / len(axes[axis]),
                                    probs[idx], p_orig))
    kept_removal = {axis: {"count": e["count"], "attention": float(probs[e["attention"]]),
                           "random": float(probs[e["random"]]) if "random" in e else None}
                    for axis, e in extra.items()}
    primary = None
    if layer is not None:
        primary = next((a for a in AXES if a in att and att[a][2] == layer), None)
    primary = primary or next((a for a in AXES if a in axes), None)
    return DeletionResult(
        label=label, target=target, p_orig=p_orig, axes=axes, curves=curves,
        attention_layers={a: v[2] for a, v in att.items()}, kept={a: v[1] for a, v in att.items()},
        kept_removal=kept_removal, primary_axis=primary, seconds=time.perf_counter() - t0,
        forward_items=len(todo),
    )
