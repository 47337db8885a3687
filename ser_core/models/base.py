"""What every paper's model shares: its raw output, the registry, and trace building.

A model's ``forward(batch, ..., record=False)`` returns a :class:`ModelOutput`; with
``record=True`` it also fills ``attentions`` with one :class:`RawAttention` per attention
layer (batched torch tensors). :func:`to_trace` turns one batch item into the
``ser_core.trace.AttentionTrace`` that the views read, cropping padding away.

Conventions for ``ModelOutput.extras`` that :func:`to_trace` understands:

- ``"padding_masks"``: {modality: bool [B, T] (True = pad)} for each axis the records use.
  Cropping keeps the non-pad positions of the item. Without a mask for a modality, the
  first ``len(labels[modality])`` positions are kept.
- ``"fused_layout"``: e.g. ``("audio", "text")`` when the "fused" axis is the modalities'
  sequences one after another; then "fused" labels are built by concatenating theirs
  unless ``labels["fused"]`` is given with the right length.
- ``"placeholders"``: {modality: name} for a position the model adds itself (e.g. a learned
  "no words" token when the ASR found no word); its label is that name.
- ``"item_extras"``: {name: tensor [B, ...]} sliced at the item and copied into the trace;
  ``"model_extras"``: {name: value} copied as they are (e.g. learned layer weights).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from torch import Tensor

from ser_core.attention import pool_blocks, pool_map
from ser_core.errors import InputError
from ser_core.trace import AttentionRecord, AttentionTrace, AxisLabels

__all__ = [
    "MODELS",
    "ModelConfig",
    "ModelOutput",
    "RawAttention",
    "build_model",
    "collate_batch",
    "concat_labels",
    "feature_extras",
    "model_axis_labels",
    "model_class",
    "model_inputs",
    "register_model",
    "to_trace",
]


@dataclass
class RawAttention:
    """One attention layer's maps for a whole batch (detached torch tensors)."""

    name: str  # e.g. "ccab_a2t.0.cross"
    kind: str  # "self" | "cross" | "key-sparse" | "nucleus" | ...
    query_modality: str  # "audio" | "text" | "visual" | "fused"
    key_modality: str
    weights: Tensor  # [B, H, Tq, Tk] after masking
    key_scores: Tensor | None = None  # [B, H, Tk]
    keep: Tensor | None = None  # [B, H, Tk] (key-sparse) or the weights' shape (nucleus)
    keep_ratio: float | None = None
    top_p: float | None = None


@dataclass
class ModelOutput:
    """A forward pass: logits [B, C], probs [B, C], recorded attentions, extras."""

    logits: Tensor
    probs: Tensor
    attentions: list[RawAttention] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- config

_C = TypeVar("_C", bound="ModelConfig")


class ModelConfig:
    """Mixin for a model's ``Config`` dataclass (nanoGPT style): plain JSON round trip."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
        if not isinstance(data, dict):
            raise InputError(f"A model config must be a dict; got {type(data).__name__}.")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise InputError(f"Unknown setting(s) {unknown} for {cls.__name__}; known: {sorted(fields)}.")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in data.items():
            if isinstance(value, list) and _is_tuple_type(hints.get(name)):
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)


def _is_tuple_type(tp: Any) -> bool:
    if tp is tuple or typing.get_origin(tp) is tuple:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_is_tuple_type(a) for a in typing.get_args(tp))
    return False


# --------------------------------------------------------------------------- registry

MODELS: dict[str, type] = {}


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register_model("ks_transformer")`` puts the class in MODELS."""

    def wrap(cls: type) -> type:
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"model name {name!r} is registered twice")
        if not hasattr(cls, "Config"):
            raise TypeError(f"{cls.__name__} needs a Config dataclass attribute")
        MODELS[name] = cls
        cls.model_name = name
        return cls

    return wrap


def model_class(name: str) -> type:
    """The registered class called ``name`` (the built-in model modules are imported first)."""
    if name not in MODELS:
        _import_builtin_models()
    if name not in MODELS:
        raise InputError(f"Unknown model {name!r}; known models: {sorted(MODELS)}.")
    return MODELS[name]


def build_model(name: str, config_dict: dict[str, Any] | None = None) -> torch.nn.Module:
    """Build a registered model from its config dict (missing settings take defaults)."""
    cls = model_class(name)
    return cls(cls.Config.from_dict(dict(config_dict or {})))


def _import_builtin_models() -> None:
    """Import the model modules that ship with ser_core so that they register themselves."""
    import importlib
    import pkgutil

    import ser_core.models as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "base":
            try:
                importlib.import_module(f"{pkg.__name__}.{info.name}")
            except ImportError:  # a model whose optional dependency is missing
                continue


# --------------------------------------------------------------------------- inputs

def model_inputs(model: Any) -> tuple[str, ...]:
    """The parts of ``Features`` a model (instance or class) reads (its ``inputs``)."""
    return tuple(getattr(model, "inputs", ("speech", "text")))


def feature_extras(model: Any) -> tuple[str, ...]:
    """The on-request Features extras (``features.EXTRAS``) a model needs computed."""
    from ser_core.features import EXTRAS

    return tuple(name for name in model_inputs(model) if name in EXTRAS)


def collate_batch(model: Any, items: list, device: Any) -> dict[str, Tensor]:
    """One padded batch in the layout the model reads (its ``collate`` classmethod)."""
    return type(model).collate(items, model.config, device)


def model_axis_labels(model: Any, feats: Any) -> dict[str, AxisLabels]:
    """Labels for every axis the model's records use, for one utterance."""
    return model.axis_labels(feats)


# --------------------------------------------------------------------------- trace

def concat_labels(*parts: AxisLabels, kind: str = "fused") -> AxisLabels:
    """Labels of sequences laid one after another (e.g. audio frames then words)."""

    def cat(attr: str) -> np.ndarray | None:
        arrays = [getattr(p, attr) for p in parts if len(p)]
        if not arrays or any(a is None for a in arrays):
            return None
        return np.concatenate([np.asarray(a, dtype=float) for a in arrays])

    names = [n for p in parts for n in p.names]
    return AxisLabels(kind, names, cat("start"), cat("end"))


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy()


def _selector(pos: np.ndarray) -> slice | np.ndarray:
    """A slice when the valid positions are a leading run (no copy of big maps), else the indices."""
    if len(pos) == 0 or (pos[0] == 0 and pos[-1] == len(pos) - 1):
        return slice(0, len(pos))
    return pos


def _index(sel: slice | np.ndarray) -> slice | Tensor:
    """A :func:`_selector` result as a tensor index."""
    return sel if isinstance(sel, slice) else torch.as_tensor(sel)


def to_trace(
    output: ModelOutput, index: int, labels: dict[str, AxisLabels], model_name: str,
    pool_to: int | None = None,
) -> AttentionTrace:
    """Item ``index`` of a batch's output → an :class:`AttentionTrace` cropped to real lengths.

    labels: {modality: AxisLabels} for every modality the records use ("audio", "text", ...,
    and "fused" where the model has a fused axis, or built from ``extras["fused_layout"]``).
    pool_to: keep maps bigger than this many positions per axis max-pooled to it
    (``AttentionRecord.pool``). Maps that come pooled already (the attention modules inside
    ``attention.maps_pooled_to(pool_to)``, for an item without padding) are taken as they are.
    """
    B = output.logits.shape[0]
    if not 0 <= index < B:
        raise IndexError(f"index {index} out of range for a batch of {B}")
    masks: dict[str, Tensor] = output.extras.get("padding_masks", {})
    placeholders: dict[str, str] = output.extras.get("placeholders", {})
    layout: tuple[str, ...] | None = output.extras.get("fused_layout")

    positions: dict[str, np.ndarray] = {}
    axis: dict[str, AxisLabels] = {}

    def resolve(modality: str) -> tuple[np.ndarray, AxisLabels]:
        if modality in positions:
            return positions[modality], axis[modality]
        given = labels.get(modality)
        if modality in masks:
            pos = np.flatnonzero(~_numpy(masks[modality][index]).astype(bool))
        elif given is not None:
            pos = np.arange(len(given))
        else:
            raise ValueError(f"no labels and no padding mask for modality {modality!r}")
        if given is not None and len(given) == len(pos):
            lab = given
        elif modality == "fused" and layout:
            lab = concat_labels(*(resolve(m)[1] for m in layout))
        elif modality in placeholders and len(pos) == 1 and (given is None or len(given) == 0):
            lab = AxisLabels(given.kind if given is not None else modality, [placeholders[modality]])
        else:
            raise ValueError(
                f"{modality} labels have {0 if given is None else len(given)} positions but item "
                f"{index} has {len(pos)} valid {modality} positions"
            )
        if len(lab) != len(pos):
            raise ValueError(f"{modality}: {len(lab)} labels for {len(pos)} positions")
        positions[modality], axis[modality] = pos, lab
        return pos, lab

    trace = AttentionTrace(model=model_name)
    for raw in output.attentions:
        qpos, qlab = resolve(raw.query_modality)
        kpos, klab = resolve(raw.key_modality)
        q_sel, k_sel = _selector(qpos), _selector(kpos)
        cell_keep = raw.keep is not None and raw.keep.dim() == raw.weights.dim()
        block = (1, 1) if pool_to is None or cell_keep else pool_blocks(len(qpos), len(kpos), pool_to)
        pooled_shape = (-(-len(qpos) // block[0]), -(-len(kpos) // block[1]))
        if block != (1, 1) and tuple(raw.weights.shape[-2:]) == pooled_shape:  # came pooled
            if not (isinstance(q_sel, slice) and isinstance(k_sel, slice)):
                raise ValueError(f"{raw.name}: a map pooled by the model must be of an item without padding")
            w = _numpy(raw.weights[index])
        else:
            w = _numpy(pool_map(raw.weights[index][:, _index(q_sel)][:, :, _index(k_sel)], block))
        scores = None if raw.key_scores is None else _numpy(raw.key_scores[index])[:, k_sel]
        keep = None
        stats: dict[str, float] = {}
        if raw.keep is not None:
            keep_item = _numpy(raw.keep[index]).astype(bool, copy=False)
            keep = keep_item[:, k_sel] if keep_item.ndim == 2 else keep_item[:, q_sel][:, :, k_sel]
            stats["kept_fraction"] = float(keep.mean()) if keep.size else 0.0
        stats["keys"] = float(len(kpos))
        trace.add(AttentionRecord(
            name=raw.name, kind=raw.kind,  # type: ignore[arg-type]
            query_modality=raw.query_modality, key_modality=raw.key_modality,
            weights=w, query_labels=qlab, key_labels=klab, key_scores=scores, keep=keep,
            keep_ratio=raw.keep_ratio, top_p=raw.top_p, stats=stats, pool=tuple(block),
        ))

    for name, value in output.extras.get("model_extras", {}).items():
        trace.extras[name] = _numpy(value) if isinstance(value, Tensor) else value
    for name, value in output.extras.get("item_extras", {}).items():
        trace.extras[name] = _numpy(value[index])
    trace.extras["probs"] = _numpy(output.probs[index])
    return trace
