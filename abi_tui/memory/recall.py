"""Hybrid recall: BM25 over the chat database and vectors in chromadb, fused, cut by a calibrated
score.

Each retriever proposes `candidates` items. Every candidate then gets the same features:
- `overlap`: the idf-weighted share of the query's terms the item holds (0..1);
- `soft`: the share of the query's weight covered by the item's most similar words, by the
  chat model's token embeddings (wordvectors.py: "dad" meets "father");
- `similarity_z`: its embedding similarity as a z-score against unrelated pairs (embedder.py);
- `self_my`, `self_i`: the query speaks of the user ("my", "me"; "I") — questions about the user
  are what memory answers, general questions rarely are.
A logistic model of these, fitted on the training split of benchmarks/data/memory_pairs.json
per kind of embedder (`FUSION_FILES`: the packaged sentence encoder's similarities are worth more
than a chat model's), says how likely the item answers the query; items under `min_score` are
dropped, so an unrelated question recalls nothing. Ties are broken by reciprocal rank fusion of
the two rankings.

Without an embedding model the lexical side works alone, cut at `min_overlap`.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from abi_tui.memory.items import MemoryItem, MemoryItems, QueryTerms, items_of_message
from abi_tui.memory.lexical import overlap, terms
from abi_tui.memory.vectors import VectorMemory
from abi_tui.memory.wordvectors import Lexicon, content_words

MODES = ("fused", "bm25", "vectors")
RRF_K = 60
FEATURES = ("overlap", "soft", "similarity_z", "self_my", "self_i")
EXPAND_K = 3  # stored words like each query word that BM25 also looks for
EXPAND_MIN_SIMILARITY = 0.45
FUSION_FILES = {"encoder": "fusion.json", "chat-model": "fusion-chat-model.json"}
_SELF_MY = re.compile(r"\b(?:my|me|mine|myself|our|ours|us)\b", re.I)
_SELF_I = re.compile(r"\b(?:i|i'm|i've|i'd|i'll|im|we)\b", re.I)


def query_features(query: str) -> dict[str, float]:
    return {"self_my": float(bool(_SELF_MY.search(query))), "self_i": float(bool(_SELF_I.search(query)))}


def word_weights(qterms: QueryTerms) -> Callable[[str], float]:
    """A query word's weight: the idf of its term (1 for a word the index drops)."""
    def weight(word: str) -> float:
        found = terms(word)
        return qterms.weights.get(found[0], 1.0) if found else 0.0
    return weight


@dataclass(frozen=True)
class Fusion:
    weights: dict[str, float] = field(default_factory=lambda: {
        "overlap": 6.0, "soft": 2.0, "similarity_z": 0.5, "self_my": 1.0, "self_i": 0.0})
    bias: float = -6.0
    min_score: float = 0.5
    min_overlap: float = 0.5  # the lexical retriever alone
    min_z: float = 3.0  # the vector retriever alone
    candidates: int = 20

    @classmethod
    def load(cls, kind: str = "encoder") -> Fusion:
        """The fit for this kind of embedder (`EncoderEmbedder.kind`, `CenteredEmbedder.kind`)."""
        path = resources.files("abi_tui.memory").joinpath("data", FUSION_FILES[kind])
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def score(self, features: dict[str, float]) -> float:
        x = self.bias + sum(w * features.get(name, 0.0) for name, w in self.weights.items())
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


@dataclass
class RecallHit:
    item: MemoryItem
    score: float
    overlap: float
    similarity: float | None = None
    sources: list[str] = field(default_factory=list)
    features: dict[str, float] = field(default_factory=dict)  # what the fused score saw

    def to_dict(self) -> dict[str, Any]:
        return {**self.item.to_dict(), "score": round(self.score, 4), "overlap": round(self.overlap, 4),
                "similarity": None if self.similarity is None else round(self.similarity, 4),
                "sources": self.sources}


@dataclass
class Timings:
    embed_ms: float = 0.0
    lexical_ms: float = 0.0
    vector_ms: float = 0.0
    fuse_ms: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()}


class HybridMemory:
    def __init__(self, items: MemoryItems, vectors: VectorMemory | None = None,
                 fusion: Fusion | None = None, lexicon: Lexicon | None = None) -> None:
        self.items = items
        self.vectors = vectors
        self.fusion = fusion or Fusion.load()
        self.lexicon = lexicon
        self.closing = threading.Event()  # set: a long sync_vectors stops after its batch

    def use_lexicon(self, lexicon: Lexicon | None) -> None:
        """Word vectors of the embedding model, filled with the words of every stored item."""
        if lexicon is not None:
            for chunk in self.items.iter_live(512):
                lexicon.add(item.text for item in chunk)
        self.lexicon = lexicon

    @property
    def model(self) -> str | None:
        return self.vectors.model if self.vectors is not None else None

    # ------------------------------------------------------------------------------ writing
    def remember(self, *, conversation_id: str, role: str, text: str, message_id: int | None = None,
                 persona: str | None = None, created: float | None = None) -> list[MemoryItem]:
        """Store a finished message's items; returns the new ones (none when it was stored)."""
        items = items_of_message(conversation_id=conversation_id, role=role, text=text,
                                 message_id=message_id, persona=persona, created=created)
        added = self.items.add(items)
        if added and self.vectors is not None:
            self.vectors.add(added)
        if added and self.lexicon is not None:
            self.lexicon.add(item.text for item in added)
        return added

    def forget(self, ids: list[str]) -> list[str]:
        """Forget items everywhere; returns the ids that were remembered."""
        live = self.items.forget(ids)
        if self.vectors is not None:
            self.vectors.delete(list(ids))  # also ids a crash left in the vectors only
        return live

    def sync_vectors(self, progress: Callable[[int, int], None] | None = None,
                     batch: int = 32) -> int:
        """Embed every live item the vector store lacks (a new model, a crash); returns how many."""
        if self.vectors is None:
            return 0
        total, done, added = self.items.count(), 0, 0
        for chunk in self.items.iter_live(batch):
            if self.closing.is_set():
                break
            missing = self.vectors.missing([item.id for item in chunk])
            todo = [item for item in chunk if item.id in missing]
            if todo:
                self.vectors.add(todo)
                added += len(todo)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        return added

    # ------------------------------------------------------------------------------ reading
    def search(self, query: str, *, k: int = 5, exclude_conversation: str | None = None,
               mode: str = "fused") -> list[RecallHit]:
        return self.search_timed(query, k=k, exclude_conversation=exclude_conversation, mode=mode)[0]

    def search_timed(self, query: str, *, k: int = 5, exclude_conversation: str | None = None,
                     mode: str = "fused", query_vector: list[float] | None = None
                     ) -> tuple[list[RecallHit], Timings]:
        """The best items that pass the cut-off, best first, and where the time went.
        `query_vector` skips embedding the query (the benchmark embeds once per question)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        timings = Timings()
        fusion = self.fusion
        if not query.strip():
            return [], timings
        vectors = self.vectors if mode != "bm25" else None
        if mode == "vectors" and vectors is None:
            return [], timings
        started = time.perf_counter()
        lexical, qterms = [], QueryTerms([], {}, frozenset())
        words = content_words(query)
        expand = None
        if mode == "fused" and self.lexicon is not None and vectors is not None:
            expand = terms(" ".join(self.lexicon.neighbours(words, k=EXPAND_K,
                                                             min_similarity=EXPAND_MIN_SIMILARITY)))
        if mode != "vectors":
            lexical, qterms = self.items.search(query, k=fusion.candidates,
                                                exclude_conversation=exclude_conversation, expand=expand)
        timings.lexical_ms = (time.perf_counter() - started) * 1000
        if mode == "bm25" or (mode == "fused" and vectors is None):
            hits = [RecallHit(h.item, h.overlap, h.overlap, None, ["bm25"]) for h in lexical
                    if h.overlap >= fusion.min_overlap]
            return sorted(hits, key=lambda h: -h.score)[:k], timings

        assert vectors is not None
        if query_vector is None:
            started = time.perf_counter()
            [query_vector] = vectors.embed([query])
            timings.embed_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        nearest = vectors.query(query_vector, k=fusion.candidates,
                                exclude_conversation=exclude_conversation)
        timings.vector_ms = (time.perf_counter() - started) * 1000
        z_of = getattr(vectors.embed, "z_score", lambda similarity: similarity)
        if mode == "vectors":
            started = time.perf_counter()
            found = self.items.get([h.id for h in nearest])  # forgotten items drop out here too
            hits = [RecallHit(found[h.id], z_of(h.similarity), 0.0, h.similarity, ["vector"])
                    for h in nearest if h.id in found and z_of(h.similarity) >= fusion.min_z]
            timings.fuse_ms = (time.perf_counter() - started) * 1000
            return hits[:k], timings

        started = time.perf_counter()
        rrf: dict[str, float] = {}
        for rank, hit in enumerate(lexical):
            rrf[hit.item.id] = rrf.get(hit.item.id, 0.0) + 1.0 / (RRF_K + rank + 1)
        for rank, hit in enumerate(nearest):
            rrf[hit.id] = rrf.get(hit.id, 0.0) + 1.0 / (RRF_K + rank + 1)
        overlaps = {h.item.id: h.overlap for h in lexical}
        similarity = {h.id: h.similarity for h in nearest}
        lexical_only = [i for i in overlaps if i not in similarity]
        similarity.update(vectors.similarities(query_vector, lexical_only))
        found = {h.item.id: h.item for h in lexical}
        found.update(self.items.get([i for i in similarity if i not in found]))
        lexical_ids = {h.item.id for h in lexical}
        nearest_ids = {h.id for h in nearest}
        per_query = query_features(query)
        word_weight = word_weights(qterms)
        hits = []
        for ident, item in found.items():
            item_terms = set(terms(item.text))
            if ident not in overlaps:
                overlaps[ident] = overlap(qterms.terms, item_terms, qterms.weights)
            sim = similarity.get(ident)
            soft = (self.lexicon.soft_overlap(words, content_words(item.text), word_weight)
                    if self.lexicon is not None else overlaps[ident])
            features = {"overlap": overlaps[ident], "similarity_z": 0.0 if sim is None else z_of(sim),
                        "soft": soft, **per_query}
            score = fusion.score(features)
            if score >= fusion.min_score:
                sources = [name for name, ids in (("bm25", lexical_ids), ("vector", nearest_ids))
                           if ident in ids]
                hits.append(RecallHit(item, score, overlaps[ident], sim, sources, features))
        hits.sort(key=lambda h: (-h.score, -rrf.get(h.item.id, 0.0)))
        timings.fuse_ms = (time.perf_counter() - started) * 1000
        return hits[:k], timings


def memory_prompt(hits: list[RecallHit], budget_tokens: int, count_tokens: Callable[[str], int]) -> str | None:
    """A system note with the recalled items, best first, within the token budget."""
    header = "Relevant notes from earlier conversations (use them if they help, ignore them otherwise):\n"
    used = count_tokens(header)
    lines = []
    for hit in hits:
        who = "the user said" if hit.item.role == "user" else "you answered"
        line = f"- ({who}) {hit.item.text}\n"
        cost = count_tokens(line)
        if used + cost > budget_tokens:
            break
        lines.append(line)
        used += cost
    return header + "".join(lines) if lines else None
