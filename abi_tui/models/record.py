"""CachedModel: one runnable model on disk, whichever tool put it there."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abi_tui.models.gguf_info import GGUFSummary

# Where a model comes from; abi deletes only its own files.
SOURCES = ("abi", "demo", "hf-cache", "lmstudio", "ollama")


@dataclass
class CachedModel:
    name: str
    path: Path                      # the file to load (the first shard of a split model)
    source: str
    files: list[Path] = field(default_factory=list)
    size: int = 0
    repo: str | None = None
    quant: str | None = None
    spec: str | None = None
    url: str | None = None
    revision: str | None = None
    sha256: list[str | None] = field(default_factory=list)   # per file, when known
    verified: bool = False
    downloaded_at: str | None = None
    summary: GGUFSummary | None = None
    loaded: bool = False
    aliases: list[str] = field(default_factory=list)
    id: str = ""   # unique among the listed models; set by cache.list_models

    def __post_init__(self) -> None:
        self.id = self.id or self.default_id

    @property
    def qualified_name(self) -> str:
        return f"{self.source}:{self.name}"

    @property
    def default_id(self) -> str:
        """The name a user sees and types: plain for abi's own and the demo model, prefixed
        with the store for the others (`ollama:llama3.2:latest`)."""
        return self.name if self.source in ("abi", "demo") else self.qualified_name

    def keys(self) -> set[str]:
        """Every string that names this model (compared case-insensitively)."""
        keys = {self.id, self.name, self.qualified_name, self.path.name, str(self.path), *self.aliases}
        if self.spec:
            keys.add(self.spec)
        if self.repo:
            keys.add(f"{self.repo}/{self.path.name}")
            if self.quant:
                keys.add(f"{self.repo}:{self.quant}")
        return {k.lower() for k in keys}

    def to_dict(self) -> dict[str, Any]:
        summary = self.summary
        return {
            "name": self.id, "short_name": self.name, "path": str(self.path), "source": self.source, "size": self.size,
            "files": [str(f) for f in self.files], "repo": self.repo,
            "quant": self.quant or (summary.quantization if summary else None),
            "params": summary.parameters if summary else None,
            "context_length": summary.context_length if summary else None,
            "architecture": summary.architecture if summary else None,
            "embedding": bool(summary and summary.is_embedding_model),
            "spec": self.spec, "url": self.url, "revision": self.revision, "sha256": self.sha256,
            "verified": self.verified, "downloaded_at": self.downloaded_at, "loaded": self.loaded,
            "gguf": summary.to_dict() if summary else None,
        }
