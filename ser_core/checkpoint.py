"""Checkpoints: one safetensors file whose header carries the JSON config; no pickled code.

A checkpoint ``name.safetensors`` holds the model's weights, and in the safetensors metadata a
JSON document with:

    model        registry name ("ks_transformer", ...)
    config       the model's Config dataclass as a dict (architecture, labels)
    encoders     {"speech": ..., "text": ..., "identity": ...} the features it was trained on
    training     data set, protocol, preset, hyperparameters, epochs, time
    metrics      validation/test WA, UA, macro-F1 of the chosen epoch

A copy of that JSON is written beside it as ``name.json`` for people to read; loading uses the
copy inside the weights file, so the two can never disagree. Writes are atomic (temp + rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import InputError
from .paths import CHECKPOINTS_DIR


def save_checkpoint(
    path: Path | str, model: torch.nn.Module, meta: dict[str, Any], half: bool = False
) -> Path:
    """Write weights + meta atomically; returns the path written.

    half=True stores floating-point weights as float16 (half the file; loading casts them back
    to the model's dtype) — used for the small checkpoints committed to the repository.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    _write(path, state, meta)
    return path


def update_meta(path: Path | str, updates: dict[str, Any]) -> dict[str, Any]:
    """Add keys to a checkpoint's meta (e.g. a faithfulness report); tensors are kept bit for bit."""
    path = _resolve(path)
    meta = {**read_meta(path), **updates}
    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    _write(path, state, meta)
    return meta


def read_meta(path: Path | str) -> dict[str, Any]:
    """The JSON meta stored inside a checkpoint (cheap: reads the header only)."""
    path = _resolve(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise InputError(f"{path.name} is not a readable checkpoint (safetensors): {exc}") from None
    if "ser_meta" not in meta:
        raise InputError(f"{path.name} has no model description; it was not written by this project.")
    return json.loads(meta["ser_meta"])


def load_checkpoint(path: Path | str, device: str | torch.device = "cpu"):
    """Build the model the checkpoint describes and load its weights.

    Returns (model in eval mode, meta). A checkpoint that does not match its model (missing or
    extra tensors, other shapes) raises InputError saying so, instead of a torch traceback.
    """
    from . import models as registry  # importing the package registers every model

    path = _resolve(path)
    meta = read_meta(path)
    name = meta.get("model")
    if name not in registry.MODELS:
        raise InputError(
            f"{path.name} is for model {name!r}, which this version does not know "
            f"(known: {', '.join(sorted(registry.MODELS))})."
        )
    try:
        model = registry.build_model(name, meta["config"])
    except Exception as exc:
        raise InputError(f"{path.name}: its config does not describe a valid {name}: {exc}") from None
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            state[key] = f.get_tensor(key)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or extra or wrong:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
        if extra:
            detail.append(f"{len(extra)} unexpected tensors (e.g. {extra[0]})")
        if wrong:
            detail.append(f"{len(wrong)} with other shapes (e.g. {wrong[0]})")
        raise InputError(f"{path.name} does not match the {name} model: " + "; ".join(detail) + ".")
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def _write(path: Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Weights + meta in one file (temp + rename, so a crash never leaves half a checkpoint),
    then the human-readable JSON copy beside it."""
    text = json.dumps(meta, indent=2, default=_json_default)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"ser_meta": text})
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint is meant to be shared
        os.replace(tmp, path)
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path.with_suffix(".json"))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def list_checkpoints(folder: Path | str = CHECKPOINTS_DIR) -> list[Path]:
    """Checkpoints in a folder, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)


#: The shipped default model (the pickers' first choice).
DEFAULT_CHECKPOINT_NAME = "ks_transformer_demo.safetensors"


def list_all_checkpoints() -> list[Path]:
    """Every checkpoint the app can open: the ones trained here (``paths.checkpoints_dir()``,
    ``SER_CHECKPOINTS_DIR``) newest first, then the shipped ones in the repo's ``checkpoints/``:
    the default first, the others by name (a fresh clone gives all of them the checkout's time)."""
    from . import paths

    out: list[Path] = []
    for folder in paths.checkpoint_dirs():
        found = list_checkpoints(folder)
        if paths._same(folder, paths.CHECKPOINTS_DIR):
            found.sort(key=lambda p: (p.name != DEFAULT_CHECKPOINT_NAME, p.name))
        out += found
    return out


def _resolve(path: Path | str) -> Path:
    path = Path(path)
    if not path.exists() and not path.is_absolute():
        from . import paths

        for folder in [*paths.checkpoint_dirs(), CHECKPOINTS_DIR]:  # a bare name: trained ones first
            candidate = folder / path
            if candidate.suffix != ".safetensors":
                candidate = candidate.with_suffix(".safetensors")
            if candidate.exists():
                path = candidate
                break
    if not path.exists():
        raise InputError(f"No checkpoint at {path}.")
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value)}")
