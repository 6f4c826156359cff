"""GGUF summary (architecture, parameters, quantization, context, layers, ...) built from the
header that `gguf_header.read_header` reads, and the memory estimate = weights + KV cache at
n_ctx."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from abi_tui.models.gguf_header import GGUFHeader, array_length, read_header

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


def _file_type_name(value: Any) -> str | None:
    from gguf.constants import LlamaFileType

    if not isinstance(value, int):
        return None
    try:
        name = LlamaFileType(value & ~int(LlamaFileType.GUESSED)).name
    except ValueError:
        return None
    return name.removeprefix("MOSTLY_").replace("ALL_", "")


def read_summary(paths: list[Path] | Path) -> GGUFSummary:
    """Summary of a GGUF (all shards of a split model: metadata from the first, tensors from
    all). Raises ModelLoadError for a file that is not a GGUF or whose tensors run past its end.
    Blocking: call it in a thread from async code."""
    files = [paths] if isinstance(paths, Path) else list(paths)
    summary = GGUFSummary(split_count=len(files))
    type_bytes: Counter[str] = Counter()
    params = 0
    for index, path in enumerate(files):
        header = read_header(path)
        for tensor in header.tensors:
            params += tensor.n_elements
            summary.weights_bytes += tensor.n_bytes
            type_bytes[tensor.type_name] += tensor.n_bytes
        summary.tensors += len(header.tensors)
        if index == 0:
            _fill_metadata(summary, header)
    summary.parameters = params or None
    if summary.quantization is None and type_bytes:
        summary.quantization = type_bytes.most_common(1)[0][0]
    return summary


def _fill_metadata(summary: GGUFSummary, header: GGUFHeader) -> None:
    meta = header.metadata
    arch = meta.get("general.architecture")
    summary.architecture = arch
    summary.name = meta.get("general.name")
    summary.size_label = meta.get("general.size_label")
    summary.quantization = _file_type_name(meta.get("general.file_type"))
    summary.chat_template = "tokenizer.chat_template" in meta
    summary.vocab_size = array_length(meta.get("tokenizer.ggml.tokens"))
    split = meta.get("split.count")
    if isinstance(split, int) and split > 1:
        summary.split_count = split
    if not arch:
        return
    summary.context_length = meta.get(f"{arch}.context_length")
    summary.layers = meta.get(f"{arch}.block_count")
    summary.embedding_size = meta.get(f"{arch}.embedding_length")
    heads = meta.get(f"{arch}.attention.head_count")
    kv_heads = meta.get(f"{arch}.attention.head_count_kv")
    summary.head_count = max(heads) if isinstance(heads, list) else heads
    if isinstance(kv_heads, list):
        summary.kv_heads_per_layer = [int(h) for h in kv_heads]
        summary.head_count_kv = max(kv_heads) if kv_heads else None
    else:
        summary.head_count_kv = kv_heads if kv_heads is not None else summary.head_count
    summary.key_length = meta.get(f"{arch}.attention.key_length")
    summary.value_length = meta.get(f"{arch}.attention.value_length")
    summary.sliding_window = meta.get(f"{arch}.attention.sliding_window")
    pooling = meta.get(f"{arch}.pooling_type")
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
