"""Sentence embeddings from the packaged MiniLM encoder, one per message, shared by its users.

The router and memory both need the meaning of the user's message before the model answers.
They share one encoder and a small cache of recent texts, so a message is embedded once
(a 20-token message costs a few milliseconds on one core; the input is capped at `MAX_TOKENS`,
head and tail, like the router's own features). One thread runs it: the encoder is small, and
the chat model's decode threads keep the other cores.

llama.cpp contexts are not thread-safe, so calls take a lock.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAX_TOKENS = 128
HEAD_TOKENS = 96  # of MAX_TOKENS: what the message asks is usually said first, then last
CACHE_SIZE = 256


class SentenceEncoder:
    def __init__(self, path: Path, threads: int = 1) -> None:
        from llama_cpp import Llama

        self._llama = Llama(str(path), embedding=True, n_ctx=MAX_TOKENS, n_batch=MAX_TOKENS,
                            n_ubatch=MAX_TOKENS, n_threads=threads, n_threads_batch=threads,
                            verbose=False)
        self.path = path
        self.dim = int(self._llama.n_embd())
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cls = int(self._llama.token_bos())
        self._sep = int(self._llama.tokenize(b"", add_bos=True)[-1])  # [SEP] closes the input

    def _tokens(self, text: str) -> list[int]:
        toks = self._llama.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=False)
        toks = [t for t in toks if t not in (self._cls, self._sep)]
        room = MAX_TOKENS - 2
        if len(toks) > room:
            toks = toks[:HEAD_TOKENS] + toks[len(toks) - (room - HEAD_TOKENS):]
        return [self._cls, *toks, self._sep]

    def encode(self, text: str) -> np.ndarray:
        """The unit-length embedding of `text` (float32, `dim` values)."""
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
            vector = self._embed_tokens(self._tokens(text))
            self._cache[text] = vector
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            return vector

    def encode_many(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.encode(t) for t in texts]) if texts else np.zeros((0, self.dim),
                                                                                np.float32)

    def _embed_tokens(self, tokens: list[int]) -> np.ndarray:
        from llama_cpp import llama_get_embeddings_seq

        llama = self._llama
        llama._ctx.kv_cache_clear()
        llama._batch.reset()
        llama._batch.add_sequence(tokens, 0, False)
        llama._ctx.decode(llama._batch)
        vector = np.ctypeslib.as_array(llama_get_embeddings_seq(llama._ctx.ctx, 0),
                                       shape=(self.dim,)).astype(np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm else vector


@lru_cache(maxsize=1)
def shared_encoder() -> SentenceEncoder | None:
    """The process's encoder, or None when the packaged model is not installed (logged once)."""
    from abi_tui.models.sentence_model import INSTALL_HINT, gguf_path

    try:
        path = gguf_path()
    except Exception as exc:  # a broken package must not stop the server
        log.warning("sentence model unavailable: %s", exc)
        return None
    if path is None:
        log.info("sentence model not installed (%s): routing reads words only and memory uses "
                 "the chat model's embeddings",
                 INSTALL_HINT)
        return None
    return SentenceEncoder(path)
