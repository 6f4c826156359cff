"""GGUF summary (architecture, parameters, quantization, context, layers, ...) read with the
`gguf` package, and the memory estimate = weights + KV cache at n_ctx."""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from abi_tui.errors import ModelLoadError

GGUF_MAGIC = b"GGUF"


def is_gguf_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _reader_class():
    import gguf
    import numpy as np

    class SummaryReader(gguf.GGUFReader):
        """gguf's reader, minus the per-element parsing of arrays.

        The stock reader builds one numpy view per vocabulary entry (about 10 s for a 262k-token
        vocabulary); a summary needs scalars, so scalar arrays are read as one view and string
        arrays are only walked over.
        """

        def _get_field_parts(self, orig_offs: int, raw_type: int):  # type: ignore[override]
            if gguf.GGUFValueType(raw_type) != gguf.GGUFValueType.ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            offs = orig_offs
            raw_itype = self._get(offs, np.uint32)
            alen = self._get(offs + 4, np.uint64)
            offs += 12
            itype = gguf.GGUFValueType(int(raw_itype[0]))
            count = int(alen[0])
            nptype = self.gguf_scalar_to_np.get(itype)
            if nptype is not None:
                data = self._get(offs, nptype, count)
                return offs + int(data.nbytes) - orig_offs, [raw_itype, alen, data], [2], [gguf.GGUFValueType.ARRAY, itype]
            if itype == gguf.GGUFValueType.STRING:
                view = memoryview(self.data)
                fmt = ">Q" if self.byte_order == "S" else "<Q"
                end = offs
                for _ in range(count):
                    end += 8 + struct.unpack_from(fmt, view, end)[0]
                raw = self._get(offs, np.uint8, end - offs)
                return end - orig_offs, [raw_itype, alen, raw], [], [gguf.GGUFValueType.ARRAY, itype]
            return super()._get_field_parts(orig_offs, raw_type)

    return SummaryReader


def _value(reader: Any, key: str) -> Any:
    import gguf

    found = reader.fields.get(key)
    if found is None:
        return None
    kind = found.types[0]
    if kind == gguf.GGUFValueType.STRING:
        return bytes(found.parts[-1]).decode("utf-8", errors="replace")
    if kind == gguf.GGUFValueType.ARRAY:
        if len(found.types) > 1 and found.types[1] == gguf.GGUFValueType.STRING:
            return int(found.parts[-2][0])  # only the length is kept
        return found.parts[-1].tolist()
    return found.parts[-1][0].item()


# llama.cpp's encoder-only architectures: they compute embeddings and cannot chat.
EMBEDDING_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3",
                                     "neo-bert", "modern-bert", "t5encoder"})


@dataclass
class GGUFSummary:
    architecture: str | None = None
    name: str | None = None
    size_label: str | None = None
    parameters: int | None = None
    quantization: str | None = None
    context_length: int | None = None
    layers: int | None = None
    embedding_size: int | None = None
    head_count: int | None = None
    head_count_kv: int | None = None
    kv_heads_per_layer: list[int] = field(default_factory=list)
    key_length: int | None = None
    value_length: int | None = None
    sliding_window: int | None = None
    chat_template: bool = False
    vocab_size: int | None = None
    weights_bytes: int = 0
    tensors: int = 0
    split_count: int = 1
    pooling_type: int | None = None  # set by embedding models (llama.cpp: 1 mean, 2 cls, 3 last...)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_embedding_model(self) -> bool:
        """An encoder trained for sentence embeddings (nomic-embed, bge, e5...), not a chat
        model: known by its architecture, or by the pooling type only such models declare."""
        return (self.architecture in EMBEDDING_ARCHITECTURES
                or (self.pooling_type is not None and self.pooling_type > 0))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GGUFSummary | None:
        if not data:
            return None
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _file_type_name(value: int | None) -> str | None:
    import gguf

    if value is None:
        return None
    try:
        name = gguf.LlamaFileType(int(value) & ~int(gguf.LlamaFileType.GUESSED)).name
    except ValueError:
        return None
    return name.removeprefix("MOSTLY_").replace("ALL_", "")


def read_summary(paths: list[Path] | Path) -> GGUFSummary:
    """Summary of a GGUF (all shards of a split model: metadata from the first, tensors from
    all). Raises ModelLoadError for a file that is not a GGUF or whose tensors run past its end.
    Blocking: call it in a thread from async code."""
    files = [paths] if isinstance(paths, Path) else list(paths)
    reader_cls = _reader_class()
    summary = GGUFSummary(split_count=len(files))
    type_bytes: Counter[str] = Counter()
    params = 0
    for index, path in enumerate(files):
        try:
            reader = reader_cls(path)
        except (ValueError, KeyError, IndexError, OSError, struct.error) as exc:
            raise ModelLoadError(f"{path} is not a readable GGUF file: {exc}") from None
        size = path.stat().st_size
        for tensor in reader.tensors:
            end = int(tensor.data_offset) + int(tensor.n_bytes)
            if end > size:
                raise ModelLoadError(f"{path} is truncated: tensor {tensor.name} ends at byte {end}, the file has {size}")
            params += int(tensor.n_elements)
            summary.weights_bytes += int(tensor.n_bytes)
            type_bytes[tensor.tensor_type.name] += int(tensor.n_bytes)
        summary.tensors += len(reader.tensors)
        if index == 0:
            _fill_metadata(summary, reader)
        del reader
    summary.parameters = params or None
    if summary.quantization is None and type_bytes:
        summary.quantization = type_bytes.most_common(1)[0][0]
    return summary


def _fill_metadata(summary: GGUFSummary, reader: Any) -> None:
    arch = _value(reader, "general.architecture")
    summary.architecture = arch
    summary.name = _value(reader, "general.name")
    summary.size_label = _value(reader, "general.size_label")
    summary.quantization = _file_type_name(_value(reader, "general.file_type"))
    summary.chat_template = reader.fields.get("tokenizer.chat_template") is not None
    vocab = _value(reader, "tokenizer.ggml.tokens")
    summary.vocab_size = vocab if isinstance(vocab, int) else None
    split = _value(reader, "split.count")
    if isinstance(split, int) and split > 1:
        summary.split_count = split
    if not arch:
        return
    summary.context_length = _value(reader, f"{arch}.context_length")
    summary.layers = _value(reader, f"{arch}.block_count")
    summary.embedding_size = _value(reader, f"{arch}.embedding_length")
    heads = _value(reader, f"{arch}.attention.head_count")
    kv_heads = _value(reader, f"{arch}.attention.head_count_kv")
    summary.head_count = max(heads) if isinstance(heads, list) else heads
    if isinstance(kv_heads, list):
        summary.kv_heads_per_layer = [int(h) for h in kv_heads]
        summary.head_count_kv = max(kv_heads) if kv_heads else None
    else:
        summary.head_count_kv = kv_heads if kv_heads is not None else summary.head_count
    summary.key_length = _value(reader, f"{arch}.attention.key_length")
    summary.value_length = _value(reader, f"{arch}.attention.value_length")
    summary.sliding_window = _value(reader, f"{arch}.attention.sliding_window")
    pooling = _value(reader, f"{arch}.pooling_type")
    summary.pooling_type = int(pooling) if isinstance(pooling, int) else None


@dataclass
class MemoryEstimate:
    n_ctx: int
    weights_bytes: int
    kv_cache_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes

    def to_dict(self) -> dict[str, int]:
        return {"n_ctx": self.n_ctx, "weights_bytes": self.weights_bytes,
                "kv_cache_bytes": self.kv_cache_bytes, "total_bytes": self.total_bytes}


def estimate_memory(summary: GGUFSummary, n_ctx: int, kv_bytes_per_value: int = 2) -> MemoryEstimate:
    """Weights plus an f16 KV cache of n_ctx cells on every layer (K and V). Sliding-window
    layers are counted at full size, as llama.cpp does with --swa-full: an upper bound."""
    n_ctx = min(n_ctx, summary.context_length) if summary.context_length else n_ctx
    layers = summary.layers or 0
    head_dim = (summary.embedding_size // summary.head_count) if summary.embedding_size and summary.head_count else 0
    key_len = summary.key_length or head_dim
    value_len = summary.value_length or head_dim
    per_layer = summary.kv_heads_per_layer or [summary.head_count_kv or 0] * layers
    kv = sum(heads * (key_len + value_len) for heads in per_layer[:layers] or per_layer) * n_ctx * kv_bytes_per_value
    return MemoryEstimate(n_ctx, summary.weights_bytes, kv)
