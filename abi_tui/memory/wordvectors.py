"""Word similarity from the model's own token embedding table, for paraphrases BM25 cannot see.

A question asks in other words ("my dad", "my bicycle", "purchase") for what was said
("my father", "my bike", "bought"). The chat model's mean-pooled hidden states hardly tell the
right fact from the others (measured: benchmarks/memory_eval.py), but its input embeddings, one
row per token, do place such words together. A word's vector is the mean of its tokens' rows,
centred on the table's mean; rows are read from the GGUF file (memory-mapped) and dequantised on
demand, so nothing is loaded twice and nothing is downloaded.

`Lexicon` keeps the vectors of the words stored items use. For a query word it finds the stored
words most like it (query expansion for BM25), and scores an item by the share of the query's
weight its words cover, each query word counting its best match (`soft_overlap`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from abi_tui.memory.lexical import stop_words

WORD = re.compile(r"[a-z][a-z0-9]+")
Tokenize = Callable[[str], list[int]]


class TokenVectors:
    """Rows of `token_embd.weight`, dequantised on demand."""

    def __init__(self, path: Path, tokenize: Tokenize, header=None) -> None:
        from gguf.constants import GGMLQuantizationType

        from abi_tui.models.gguf_header import read_header

        header = header or read_header(path)
        tensor = next((t for t in header.tensors if t.name == "token_embd.weight"), None)
        if tensor is None:
            raise ValueError(f"{path.name} has no token embedding table")
        self.dim, n_rows = int(tensor.shape[0]), int(tensor.shape[1])
        self.kind = GGMLQuantizationType(tensor.type)
        row_bytes = tensor.n_bytes // n_rows
        self._rows = np.memmap(path, dtype=np.uint8, mode="r", offset=header.data_start + tensor.offset,
                               shape=(n_rows, row_bytes))
        self.tokenize = tokenize
        sample = self._dequantize(np.linspace(0, n_rows - 1, num=min(n_rows, 4096), dtype=np.int64))
        self.mean = sample.mean(axis=0)

    def _dequantize(self, ids: np.ndarray) -> np.ndarray:
        from gguf.quants import dequantize

        return np.asarray(dequantize(np.asarray(self._rows[ids]), self.kind), dtype=np.float32
                          ).reshape(len(ids), self.dim)

    def word(self, word: str) -> np.ndarray:
        ids = [i for i in self.tokenize(" " + word) if 0 <= i < len(self._rows)]
        if not ids:
            return np.zeros(self.dim, dtype=np.float32)
        vector = self._dequantize(np.asarray(ids, dtype=np.int64)).mean(axis=0) - self.mean
        norm = float(np.linalg.norm(vector)) or 1.0
        return vector / norm


def content_words(text: str) -> list[str]:
    stops = stop_words()
    return [w for w in WORD.findall(text.lower()) if w not in stops]


class Lexicon:
    """Vectors of the words stored items use (grown as items arrive; thread-safe)."""

    def __init__(self, vectors: TokenVectors) -> None:
        self.vectors = vectors
        self._lock = threading.Lock()
        self._index: dict[str, int] = {}
        self._matrix = np.zeros((0, vectors.dim), dtype=np.float32)
        self._cache: dict[str, np.ndarray] = {}

    def vector(self, word: str) -> np.ndarray:
        vector = self._cache.get(word)
        if vector is None:
            vector = self.vectors.word(word)
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[word] = vector
        return vector

    def add(self, texts: Iterable[str]) -> None:
        new = {w for text in texts for w in content_words(text) if w not in self._index}
        if not new:
            return
        rows = np.stack([self.vector(w) for w in sorted(new)])
        with self._lock:
            for word in sorted(new):
                self._index.setdefault(word, len(self._index))
            self._matrix = np.vstack([self._matrix, rows])[: len(self._index)]

    def neighbours(self, words: list[str], *, k: int, min_similarity: float) -> list[str]:
        """Stored words most like each query word (the words themselves excluded)."""
        with self._lock:
            matrix, index = self._matrix, list(self._index)
        if not words or not len(matrix):
            return []
        query = np.stack([self.vector(w) for w in words])
        sims = query @ matrix.T
        out = []
        for row, word in zip(sims, words):
            for j in np.argsort(-row)[: k + 1]:
                if row[j] >= min_similarity and index[j] != word:
                    out.append(index[j])
        return out

    def soft_overlap(self, words: list[str], item_words: list[str], weight: Callable[[str], float]) -> float:
        """Share of the query's weight its best-matching item words cover (0..1)."""
        if not words or not item_words:
            return 0.0
        sims = np.stack([self.vector(w) for w in words]) @ np.stack([self.vector(w) for w in item_words]).T
        best = np.clip(sims.max(axis=1), 0.0, 1.0)
        weights = np.asarray([weight(w) for w in words])
        total = float(weights.sum())
        return float((best * weights).sum() / total) if total > 0 else 0.0
