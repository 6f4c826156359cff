"""Sentence embeddings from a llama.cpp model, centred so that similarity means something.

Mean-pooled hidden states of a generative model share one large common direction: every pair
of sentences scores 0.6-0.9 cosine similarity, related or not (measured on gemma-3-270m). Taking
away the mean embedding of a fixed, diverse reference set and renormalising ("all-but-the-top",
Mu & Viswanath 2018) spreads unrelated pairs around 0 and keeps related ones high, so one
threshold works. The reference set is embedded once per model.

Even centred, "how similar is unrelated" differs between models, so a similarity is also given as
a z-score against the similarities of a second set of unrelated sentences (data/background.txt):
a cut-off tuned on one model then means the same on another.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from importlib import resources

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


class CenteredEmbedder:
    def __init__(self, raw: RawEmbed) -> None:
        self.raw = raw
        reference = raw(list(REFERENCE_TEXTS))
        n = len(reference)
        self.mean = [sum(column) / n for column in zip(*reference)]
        background = self(background_texts())
        sims = [sum(a * b for a, b in zip(background[i], background[j]))
                for i in range(len(background)) for j in range(i + 1, len(background))]
        self.unrelated_mean = statistics.fmean(sims)
        self.unrelated_std = statistics.pstdev(sims) or 1.0

    def __call__(self, texts: list[str]) -> list[list[float]]:
        mean = self.mean
        return [_normalise([v - m for v, m in zip(vector, mean)]) for vector in self.raw(texts)]

    def z_score(self, similarity: float) -> float:
        """How many standard deviations above an unrelated pair's similarity."""
        return (similarity - self.unrelated_mean) / self.unrelated_std
