"""Sentence embeddings for memory: the packaged sentence encoder, or a llama.cpp model's centred
hidden states; either way with a z-score that makes one similarity cut-off mean the same.

The packaged encoder (all-MiniLM-L6-v2, `models/sentence_encoder.py`) was trained for sentence
similarity: a question and the fact it asks for in other words score well above unrelated pairs
(about 0.4 against 0.05), so its vectors are used as they are (`EncoderEmbedder`).

A chat model is the fallback when the encoder is not installed. Mean-pooled hidden states of a
generative model share one large common direction: every pair of sentences scores 0.6-0.9 cosine
similarity, related or not (measured on gemma-3-270m). Taking away the mean embedding of a fixed,
diverse reference set and renormalising ("all-but-the-top", Mu & Viswanath 2018) spreads
unrelated pairs around 0 and keeps related ones high (`CenteredEmbedder`). The reference set is
embedded once per model.

"How similar is unrelated" differs between models, so a similarity is also given as a z-score
against the similarities of a second set of unrelated sentences (data/background.txt): a cut-off
tuned on one model then means the same on another.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable
from importlib import resources
from typing import Any

log = logging.getLogger(__name__)

RawEmbed = Callable[[list[str]], list[list[float]]]

REFERENCE_TEXTS = (
    "The weather today is cloudy with a chance of rain.",
    "Please restart the server after changing the configuration.",
    "She bought fresh bread at the market.",
    "The function returns a list of integers.",
    "I feel tired after a long week at work.",
    "Football is popular in many countries.",
    "The meeting was moved to Thursday afternoon.",
    "Photosynthesis converts light into chemical energy.",
    "He plays the guitar in a small band.",
    "Install the package with pip and run the tests.",
    "The train to the airport leaves every twenty minutes.",
    "My grandmother makes the best soup.",
    "Prices rose sharply last quarter.",
    "The cat slept on the warm windowsill.",
    "Use a hash map for constant-time lookups.",
    "We hiked to the top of the mountain at sunrise.",
)


def _normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def background_texts() -> list[str]:
    text = resources.files("abi_tui.memory").joinpath("data", "background.txt").read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


class _ZScored:
    """An embedder that also says how far a similarity is above an unrelated pair's."""

    unrelated_mean = 0.0
    unrelated_std = 1.0

    def __call__(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError

    def _calibrate(self) -> None:
        background = self(background_texts())
        sims = [sum(a * b for a, b in zip(background[i], background[j]))
                for i in range(len(background)) for j in range(i + 1, len(background))]
        self.unrelated_mean = statistics.fmean(sims)
        self.unrelated_std = statistics.pstdev(sims) or 1.0

    def z_score(self, similarity: float) -> float:
        """How many standard deviations above an unrelated pair's similarity."""
        return (similarity - self.unrelated_mean) / self.unrelated_std


class CenteredEmbedder(_ZScored):
    """A chat model's mean-pooled hidden states, centred and renormalised."""

    kind = "chat-model"

    def __init__(self, raw: RawEmbed) -> None:
        self.raw = raw
        reference = raw(list(REFERENCE_TEXTS))
        n = len(reference)
        self.mean = [sum(column) / n for column in zip(*reference)]
        self._calibrate()

    def __call__(self, texts: list[str]) -> list[list[float]]:
        mean = self.mean
        return [_normalise([v - m for v, m in zip(vector, mean)]) for vector in self.raw(texts)]


class EncoderEmbedder(_ZScored):
    """The packaged sentence encoder's unit vectors (`SentenceEncoder.encode_many`), as they are."""

    kind = "encoder"

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self._calibrate()

    def __call__(self, texts: list[str]) -> list[list[float]]:
        return self.encoder.encode_many(list(texts)).tolist()


def packaged_encoder() -> Any | None:
    """The packaged sentence encoder, or None when it is not installed or does not load (memory
    then embeds with a chat model). Loads it on first use (about half a second)."""
    from abi_tui.models.sentence_encoder import shared_encoder

    try:
        return shared_encoder()
    except Exception as exc:  # a broken model file must not stop memory
        log.warning("sentence encoder unavailable for memory: %s", exc)
        return None
