"""The vector half of memory: memory items' embeddings in chromadb.

The server owns the store: an embedded `PersistentClient` at $ABI_HOME/vectors, or a Chroma
server when `vector_store.url` is set. Embeddings always come from a llama.cpp model through the
`embed` callable (never chromadb's default function, which would download a model at run time);
one collection per embedding model, because vectors of different models do not mix. An item has
the same id here as in the chat database (memory/items.py), which is the record.
All methods block (chromadb and llama.cpp calls): the server runs them in worker threads.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from abi_tui.memory.items import MemoryItem

log = logging.getLogger(__name__)

Embed = Callable[[list[str]], list[list[float]]]


@dataclass(frozen=True)
class VectorHit:
    id: str
    similarity: float  # cosine


def collection_name(model: str) -> str:
    """Chroma names: 3-63 characters of [a-zA-Z0-9._-]; the model's name plus a short hash."""
    slug = re.sub(r"[^a-zA-Z0-9_-]+", "-", model).strip("-_")[:40] or "model"
    digest = hashlib.sha1(model.encode()).hexdigest()[:8]
    return f"items-{slug}-{digest}"


def make_client(url: str | None, path: Path) -> Any:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    quiet = ChromaSettings(anonymized_telemetry=False)  # no phoning home from a local tool
    if url:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        return chromadb.HttpClient(host=parts.hostname or "127.0.0.1", port=parts.port or 8000,
                                   ssl=parts.scheme == "https", settings=quiet)
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=quiet)


def dot(a: Sequence[float], b: Sequence[float]) -> float:
    return float(sum(x * y for x, y in zip(a, b)))


class VectorMemory:
    def __init__(self, client: Any, embed: Embed, model: str) -> None:
        self.client = client
        self.embed = embed
        self.model = model
        self._lock = threading.Lock()
        self.collection = client.get_or_create_collection(
            collection_name(model), embedding_function=None,
            metadata={"hnsw:space": "cosine", "embedding_model": model},
        )

    def add(self, items: list[MemoryItem], vectors: list[list[float]] | None = None) -> None:
        """Store items (upsert: the same id twice is stored once)."""
        if not items:
            return
        vectors = vectors if vectors is not None else self.embed([item.text for item in items])
        metadatas = [{"conversation_id": item.conversation_id, "role": item.role, "kind": item.kind,
                      "ts": item.created} for item in items]
        with self._lock:
            self.collection.upsert(ids=[item.id for item in items], embeddings=vectors,
                                   documents=[item.text for item in items], metadatas=metadatas)

    def missing(self, ids: list[str]) -> set[str]:
        """Which of these ids the store does not hold."""
        if not ids:
            return set()
        with self._lock:
            found = self.collection.get(ids=ids, include=[])["ids"]
        return set(ids) - set(found)

    def query(self, vector: list[float], *, k: int = 20,
              exclude_conversation: str | None = None) -> list[VectorHit]:
        """The k nearest items, most similar first."""
        where = {"conversation_id": {"$ne": exclude_conversation}} if exclude_conversation else None
        with self._lock:
            count = self.collection.count()
            if count == 0:
                return []
            result = self.collection.query(query_embeddings=[vector], n_results=min(k, count),
                                           where=where, include=["distances"])
        return [VectorHit(i, 1.0 - float(d)) for i, d in zip(result["ids"][0], result["distances"][0])]

    def similarities(self, vector: list[float], ids: list[str]) -> dict[str, float]:
        """Cosine similarity of the query to these stored items (items another retriever found)."""
        if not ids:
            return {}
        with self._lock:
            result = self.collection.get(ids=ids, include=["embeddings"])
        return {i: dot(vector, v) for i, v in zip(result["ids"], result["embeddings"])}

    def delete(self, ids: list[str]) -> None:
        if ids:
            with self._lock:
                self.collection.delete(ids=ids)

    def count(self) -> int:
        with self._lock:
            return self.collection.count()
