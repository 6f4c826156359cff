"""Vector memory (SPEC §5.4): finished turns in chromadb, retrieved into later prompts.

The server owns the store: an embedded `PersistentClient` at $ABI_HOME/vectors, or a Chroma
server when `vector_store.url` is set. Embeddings always come from a llama.cpp model through
the `embed` callable (never chromadb's default function, which would download a model at run
time); one collection per embedding model, because vectors of different models do not mix.
All methods block (chromadb and llama.cpp calls): the server runs them in worker threads.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

Embed = Callable[[list[str]], list[list[float]]]


@dataclass
class MemoryHit:
    text: str
    similarity: float
    conversation_id: str
    persona: str | None
    role: str
    ts: float

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "similarity": round(self.similarity, 4), "conversation_id": self.conversation_id,
                "persona": self.persona, "role": self.role, "ts": self.ts}


def collection_name(model: str) -> str:
    """Chroma names: 3-63 characters of [a-zA-Z0-9._-]; the model's name plus a short hash."""
    slug = re.sub(r"[^a-zA-Z0-9_-]+", "-", model).strip("-_")[:40] or "model"
    digest = hashlib.sha1(model.encode()).hexdigest()[:8]
    return f"turns-{slug}-{digest}"


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


class VectorMemory:
    def __init__(self, client: Any, embed: Embed, model: str, threshold: float = 0.35) -> None:
        self.client = client
        self.embed = embed
        self.model = model
        self.threshold = threshold
        self._lock = threading.Lock()
        self.collection = client.get_or_create_collection(
            collection_name(model), embedding_function=None,
            metadata={"hnsw:space": "cosine", "embedding_model": model},
        )

    def add_turn(self, *, conversation_id: str, persona: str | None, role: str, text: str,
                 ts: float | None = None, turn_id: str | None = None) -> str:
        """Store one message. `turn_id` (the chat store's message id) makes it idempotent: the
        same message written twice, by a retry or a rebuild after a crash, is stored once."""
        text = text.strip()
        if not text:
            return ""
        turn_id = turn_id or uuid.uuid4().hex
        [vector] = self.embed([text])
        metadata = {"conversation_id": conversation_id, "persona": persona or "", "role": role,
                    "ts": ts if ts is not None else time.time()}
        with self._lock:
            self.collection.upsert(ids=[turn_id], embeddings=[vector], documents=[text], metadatas=[metadata])
        return turn_id

    def missing(self, turn_ids: list[str]) -> set[str]:
        """Which of these ids the store does not hold."""
        if not turn_ids:
            return set()
        with self._lock:
            found = self.collection.get(ids=turn_ids, include=[])["ids"]
        return set(turn_ids) - set(found)

    def search(self, query: str, *, k: int = 5, threshold: float | None = None,
               exclude_conversation: str | None = None) -> list[MemoryHit]:
        """The most similar earlier turns above the threshold (cosine similarity)."""
        with self._lock:
            count = self.collection.count()
        if not query.strip() or count == 0:
            return []
        [vector] = self.embed([query])
        where = {"conversation_id": {"$ne": exclude_conversation}} if exclude_conversation else None
        with self._lock:
            result = self.collection.query(query_embeddings=[vector], n_results=min(k, count), where=where,
                                           include=["documents", "metadatas", "distances"])
        limit = self.threshold if threshold is None else threshold
        hits = []
        for text, meta, distance in zip(result["documents"][0], result["metadatas"][0], result["distances"][0]):
            similarity = 1.0 - float(distance)
            if similarity >= limit:
                hits.append(MemoryHit(text, similarity, str(meta.get("conversation_id", "")),
                                      meta.get("persona") or None, str(meta.get("role", "")),
                                      float(meta.get("ts", 0.0))))
        return hits

    def count(self) -> int:
        with self._lock:
            return self.collection.count()


def message_turn_id(message_id: int) -> str:
    """The vector-store id of a chat-store message."""
    return f"msg-{message_id}"


def memory_prompt(hits: list[MemoryHit], budget_tokens: int, count_tokens: Callable[[str], int]) -> str | None:
    """A system message with the retrieved turns, most similar first, within the token budget."""
    header = "Relevant notes from earlier conversations (use them if they help, ignore them otherwise):\n"
    used = count_tokens(header)
    lines = []
    for hit in hits:
        line = f"- ({hit.role}) {hit.text}\n"
        cost = count_tokens(line)
        if used + cost > budget_tokens:
            break
        lines.append(line)
        used += cost
    return header + "".join(lines) if lines else None
