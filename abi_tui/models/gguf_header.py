"""A fast GGUF header reader and file check.

gguf.GGUFReader builds a numpy view per array element: on gemma-3's 262k-token vocabulary it
takes seconds. Validation before a hot swap and model listings need milliseconds, so this reads
the header with struct over one buffer, skipping large arrays, and uses the gguf package's own
constants for types and quantization block sizes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
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
MAX_KEPT_ARRAY = 64  # longer arrays (vocabularies, merges) are reported by length only


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type: int
    offset: int
    n_bytes: int


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


class _Buffer:
    def __init__(self, handle, size: int) -> None:
        self.handle, self.size = handle, size
        self.data = b""
        self.base = 0  # file offset of data[0]
        self.pos = 0   # file offset

    def need(self, n: int) -> None:
        end = self.pos + n
        if end > self.size:
            raise EOFError
        if end > self.base + len(self.data):
            self.handle.seek(self.pos)
            self.data = self.handle.read(max(n, 4 << 20))
            self.base = self.pos

    def unpack(self, fmt: str) -> tuple:
        n = struct.calcsize("<" + fmt)
        self.need(n)
        values = struct.unpack_from("<" + fmt, self.data, self.pos - self.base)
        self.pos += n
        return values

    def string(self) -> str:
        (n,) = self.unpack("Q")
        if n > 1 << 24:
            raise ValueError(f"string of {n} bytes in the header")
        self.need(n)
        start = self.pos - self.base
        self.pos += n
        return self.data[start:start + n].decode("utf-8", errors="replace")

    def skip(self, n: int) -> None:
        if self.pos + n > self.size:
            raise EOFError
        self.pos += n


def _value(buf: _Buffer, kind: int) -> Any:
    if kind == GGUFValueType.STRING:
        return buf.string()
    if kind == GGUFValueType.ARRAY:
        item_kind, count = buf.unpack("IQ")
        if count <= MAX_KEPT_ARRAY:
            return [_value(buf, item_kind) for _ in range(count)]
        if item_kind == GGUFValueType.STRING:
            for _ in range(count):
                (n,) = buf.unpack("Q")
                buf.skip(n)
        elif item_kind in _SCALARS:
            buf.skip(struct.calcsize("<" + _SCALARS[GGUFValueType(item_kind)]) * count)
        else:
            for _ in range(count):
                _value(buf, item_kind)
        return {"array_length": count}
    fmt = _SCALARS.get(GGUFValueType(kind))
    if fmt is None:
        raise ValueError(f"unknown value type {kind}")
    return buf.unpack(fmt)[0]


def tensor_bytes(kind: int, shape: tuple[int, ...]) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
    elements = 1
    for dim in shape:
        elements *= dim
    return elements // block * size


def read_header(path: str | os.PathLike) -> GGUFHeader:
    """Read a GGUF's metadata and tensor table and check every tensor lies inside the file.

    Raises ModelLoadError, naming the file and what is wrong, for anything else.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            buf = _Buffer(handle, size)
            try:
                magic, version = buf.unpack("II")
            except EOFError:
                raise ModelLoadError(f"{path.name} is not a GGUF model file (only {size} bytes)") from None
            if magic != GGUF_MAGIC:
                raise ModelLoadError(f"{path.name} is not a GGUF model file (bad magic bytes)")
            if version not in (2, 3):
                raise ModelLoadError(f"{path.name}: unsupported GGUF version {version}")
            n_tensors, n_kv = buf.unpack("QQ")
            header = GGUFHeader(path=path, version=version, file_size=size)
            for _ in range(n_kv):
                key = buf.string()
                (kind,) = buf.unpack("I")
                header.metadata[key] = _value(buf, kind)
            for _ in range(n_tensors):
                name = buf.string()
                (n_dims,) = buf.unpack("I")
                shape = buf.unpack("Q" * n_dims)
                kind, offset = buf.unpack("IQ")
                header.tensors.append(TensorInfo(name, tuple(shape), kind, offset, tensor_bytes(kind, shape)))
    except EOFError:
        raise ModelLoadError(f"{path.name} is truncated: its header ends past the end of the file ({size} bytes)") from None
    except (ValueError, KeyError, struct.error) as exc:
        raise ModelLoadError(f"{path.name} has a corrupt GGUF header: {exc}") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from None
    alignment = int(header.metadata.get("general.alignment", 32))
    header.data_start = (buf.pos + alignment - 1) // alignment * alignment
    for tensor in header.tensors:
        end = header.data_start + tensor.offset + tensor.n_bytes
        if end > size:
            raise ModelLoadError(
                f"{path.name} is truncated: tensor {tensor.name} needs bytes up to {end:,} "
                f"but the file has {size:,} (an interrupted download?)"
            )
    return header
