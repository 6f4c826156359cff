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
    def __init__(self, path: Path, threads: int = 1, normalize: bool = True) -> None:
        import llama_cpp as L
        from llama_cpp import _internals as internals

        from abi_tui.models.llama_log import LLAMA_LOG

        model_params = L.llama_model_default_params()
        model_params.n_gpu_layers = 0  # 23 MB: the GPU is for the chat model
        ctx_params = L.llama_context_default_params()
        ctx_params.n_ctx = ctx_params.n_batch = ctx_params.n_ubatch = MAX_TOKENS
        ctx_params.n_threads = ctx_params.n_threads_batch = threads
        ctx_params.embeddings = True
        ctx_params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        with LLAMA_LOG.capture() as lines:
            try:
                self._model = internals.LlamaModel(path_model=str(path), params=model_params, verbose=True)
                self._ctx = internals.LlamaContext(model=self._model, params=ctx_params, verbose=True)
            except (ValueError, RuntimeError) as exc:
                raise RuntimeError(f"llama.cpp could not load {path.name}: "
                                   f"{LLAMA_LOG.last_error(lines) or exc}") from None
        self._batch = internals.LlamaBatch(n_tokens=MAX_TOKENS, embd=0, n_seq_max=1, verbose=True)
        self.path = path
        self.normalize = normalize
        self.dim = int(self._model.n_embd())
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cls = int(self._model.token_bos())
        self._sep = int(self._model.tokenize(b"", add_bos=True, special=False)[-1])  # [SEP] closes the input

    def tokens(self, text: str) -> list[int]:
        """The encoder's input for `text`: [CLS], at most MAX_TOKENS - 2 tokens (head and tail), [SEP]."""
        toks = self._model.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=False)
        toks = [t for t in toks if t not in (self._cls, self._sep)]
        room = MAX_TOKENS - 2
        if len(toks) > room:
            toks = toks[:HEAD_TOKENS] + toks[len(toks) - (room - HEAD_TOKENS):]
        return [self._cls, *toks, self._sep]

    def encode(self, text: str) -> np.ndarray:
        """The embedding of `text` (float32, `dim` values): unit length, or with
        `normalize=False` the mean of the token states as it comes."""
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
            vector = self._embed_tokens(self.tokens(text))
            self._cache[text] = vector
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            return vector

    def encode_many(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.encode(t) for t in texts]) if texts else np.zeros((0, self.dim),
                                                                                np.float32)

    def _embed_tokens(self, tokens: list[int]) -> np.ndarray:
        from llama_cpp import llama_get_embeddings_seq

        self._ctx.kv_cache_clear()
        self._batch.reset()
        self._batch.add_sequence(tokens, 0, False)
        self._ctx.decode(self._batch)
        vector = np.ctypeslib.as_array(llama_get_embeddings_seq(self._ctx.ctx, 0),
                                       shape=(self.dim,)).astype(np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm and self.normalize else vector


@lru_cache(maxsize=2)
def shared_encoder(adapter: Path | None = None) -> SentenceEncoder | None:
    """The process's encoder, or None when the packaged model is not installed (logged once).

    With `adapter`, the tuned copy of it that the router's own classifier reads (see
    `sentence_model.merged_weights`); its embeddings are not normalised."""
    from abi_tui.models.sentence_model import INSTALL_HINT, gguf_path

    try:
        path = gguf_path(adapter)
    except Exception as exc:  # a broken package must not stop the server
        log.warning("sentence model unavailable: %s", exc)
        return None
    if path is None:
        log.info("sentence model not installed (%s): routing reads words only and memory uses "
                 "the chat model's embeddings",
                 INSTALL_HINT)
        return None
    return SentenceEncoder(path, normalize=adapter is None)
