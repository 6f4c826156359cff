"""Per-token delay patterns of the mock backend.

`p` is the fraction of the answer generated so far (0 at the first token).
"""

from __future__ import annotations

import random

PATTERNS = ("constant_rate", "variable_rate", "burst", "warmup")
BURST_EVERY = 8


def token_delay_ms(pattern: str, index: int, total: int, min_ms: float, max_ms: float,
                   rng: random.Random) -> float:
    if pattern == "constant_rate":
        return (min_ms + max_ms) / 2
    if pattern == "variable_rate":
        return rng.uniform(min_ms, max_ms)
    if pattern == "burst":
        return max_ms if (index + 1) % BURST_EVERY == 0 else min_ms
    if pattern == "warmup":
        p = index / total if total else 0.0
        return min_ms + (max_ms - min_ms) * (1 - p)
    raise ValueError(f"unknown pattern {pattern!r} (known: {', '.join(PATTERNS)})")


def mean_delay_ms(pattern: str, total: int, min_ms: float, max_ms: float) -> float:
    """The configured mean delay per token, for the benchmark's pipeline-overhead figure."""
    if pattern in ("constant_rate", "variable_rate"):
        return (min_ms + max_ms) / 2
    rng = random.Random(0)
    delays = [token_delay_ms(pattern, i, total, min_ms, max_ms, rng) for i in range(total)]
    return sum(delays) / len(delays) if delays else 0.0
