"""The one GGUF reader: metadata, tensor table and a check that every tensor lies in the file.

gguf.GGUFReader builds a numpy view per array element: on gemma-3's 262k-token vocabulary it
takes seconds. Validation before a hot swap, the Models pane and `abi model` read many files and
need milliseconds, so this walks the header with struct over a memory map, keeps short arrays,
reports long ones (vocabularies, merges, scores) by length only, and takes the format's
constants (magic, value types, quantization block sizes) from the gguf package.
`gguf_info.read_summary` builds the models' summary from what this returns.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from gguf.constants import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType

from abi_tui.errors import ModelLoadError

_SCALARS = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h", GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}
# Longer arrays are reported as {"array_length": n}. Strings: vocabularies and merges are long,
# nothing a summary needs is. Numbers: per-layer values (head counts) are kept, per-token ones
# (scores, token types) are not.
MAX_KEPT_STRINGS = 64
MAX_KEPT_NUMBERS = 4096


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type: int
    offset: int  # from the start of the data section
    n_bytes: int

    @property
    def n_elements(self) -> int:
        elements = 1
        for dim in self.shape:
            elements *= dim
        return elements

    @property
    def type_name(self) -> str:
        return GGMLQuantizationType(self.type).name


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    data_start: int = 0
    file_size: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)


def array_length(value: Any) -> int | None:
    """The length of an array value, kept or not; None for a scalar."""
    if isinstance(value, list):
        return len(value)
    if isinstance(value, dict):
        return value.get("array_length")
    return None


@cache
def _struct(fmt: str) -> struct.Struct:
    return struct.Struct(fmt)


class _Cursor:
    """A position in the mapped file; running past its end raises EOFError (truncated)."""

    def __init__(self, data: mmap.mmap, endian: str) -> None:
        self.data, self.size, self.endian = data, len(data), endian
        self.pos = 0

    def unpack(self, fmt: str) -> tuple:
        layout = _struct(self.endian + fmt)
        if self.pos + layout.size > self.size:
            raise EOFError
        values = layout.unpack_from(self.data, self.pos)
        self.pos += layout.size
        return values

    def string(self) -> str:
        (n,) = self.unpack("Q")
        if n > 1 << 24:
            raise ValueError(f"string of {n} bytes in the header")
        self.skip(n)
        return self.data[self.pos - n:self.pos].decode("utf-8", errors="replace")

    def skip(self, n: int) -> None:
        if self.pos + n > self.size:
            raise EOFError
        self.pos += n

    def skip_strings(self, count: int) -> None:
        # The hot loop of a 262k-token vocabulary: one unpack per string, nothing else.
        unpack, data, pos = _struct(self.endian + "Q").unpack_from, self.data, self.pos
        try:
            for _ in range(count):
                pos += 8 + unpack(data, pos)[0]
        except struct.error:
            raise EOFError from None
        self.skip(pos - self.pos)


def _value(cur: _Cursor, kind: int) -> Any:
    if kind == GGUFValueType.STRING:
        return cur.string()
    if kind == GGUFValueType.ARRAY:
        item_kind, count = cur.unpack("IQ")
        scalar = _SCALARS.get(GGUFValueType(item_kind))
        if scalar is not None and count <= MAX_KEPT_NUMBERS:
            return list(cur.unpack(f"{count}{scalar}"))
        if count <= MAX_KEPT_STRINGS:
            return [_value(cur, item_kind) for _ in range(count)]
        if scalar is not None:
            cur.skip(_struct("<" + scalar).size * count)
        elif item_kind == GGUFValueType.STRING:
            cur.skip_strings(count)
        else:
            for _ in range(count):
                _value(cur, item_kind)
        return {"array_length": count}
    fmt = _SCALARS.get(GGUFValueType(kind))
    if fmt is None:
        raise ValueError(f"unknown value type {kind}")
    return cur.unpack(fmt)[0]


def tensor_bytes(kind: int, shape: tuple[int, ...]) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
    elements = 1
    for dim in shape:
        elements *= dim
    return elements // block * size


def _parse(path: Path, data: mmap.mmap) -> GGUFHeader:
    size = len(data)
    magic, version = _struct("<II").unpack_from(data, 0)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{path.name} is not a GGUF model file (bad magic bytes)")
    endian = "<"
    if version & 0xFFFF == 0:  # a big-endian file (the magic is bytes, the version is not)
        endian, version = ">", _struct(">I").unpack_from(data, 4)[0]
    if version not in (2, 3):
        raise ModelLoadError(f"{path.name}: unsupported GGUF version {version}")
    cur = _Cursor(data, endian)
    cur.pos = 8
    n_tensors, n_kv = cur.unpack("QQ")
    header = GGUFHeader(path=path, version=version, file_size=size)
    for _ in range(n_kv):
        key = cur.string()
        (kind,) = cur.unpack("I")
        header.metadata[key] = _value(cur, kind)
    for _ in range(n_tensors):
        name = cur.string()
        (n_dims,) = cur.unpack("I")
        shape = cur.unpack("Q" * n_dims)
        kind, offset = cur.unpack("IQ")
        header.tensors.append(TensorInfo(name, tuple(shape), kind, offset, tensor_bytes(kind, shape)))
    alignment = int(header.metadata.get("general.alignment", 32))
    header.data_start = (cur.pos + alignment - 1) // alignment * alignment
    return header


def read_header(path: str | os.PathLike) -> GGUFHeader:
    """Read a GGUF's metadata and tensor table and check every tensor lies inside the file.

    Raises ModelLoadError, naming the file and what is wrong, for anything else.
    """
    path = Path(path)
    size = 0
    try:
        size = path.stat().st_size
        if size < 8:
            raise ModelLoadError(f"{path.name} is not a GGUF model file (only {size} bytes)")
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            header = _parse(path, data)
    except EOFError:
        raise ModelLoadError(f"{path.name} is truncated: its header ends past the end of the file ({size} bytes)") from None
    except (ValueError, KeyError, struct.error) as exc:
        raise ModelLoadError(f"{path.name} has a corrupt GGUF header: {exc}") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from None
    for tensor in header.tensors:
        end = header.data_start + tensor.offset + tensor.n_bytes
        if end > size:
            raise ModelLoadError(
                f"{path.name} is truncated: tensor {tensor.name} needs bytes up to {end:,} "
                f"but the file has {size:,} (an interrupted download?)"
            )
    return header
