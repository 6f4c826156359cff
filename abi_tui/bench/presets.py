"""Benchmark presets: tokens per run, warm-up runs, measured runs, patterns, delays.

A preset expands into one scenario per mock pattern. `runs` and `warmup` count requests per
scenario; request k asks for `token_counts[k % len(token_counts)]` tokens, so every size is
measured the same number of times. `concurrency` is the closed-loop load a preset runs at unless
the command line names another load.
"""

from __future__ import annotations

from dataclasses import dataclass

from abi_tui.backends.mock_patterns import PATTERNS


@dataclass(frozen=True)
class Preset:
    name: str
    token_counts: tuple[int, ...]
    warmup: int
    runs: int
    patterns: tuple[str, ...]
    min_ms: float
    max_ms: float
    concurrency: int

    def mock_model(self, pattern: str) -> str:
        return mock_model_id(pattern, self.min_ms, self.max_ms)


PRESETS: dict[str, Preset] = {
    "quick": Preset("quick", (32, 64), 5, 50, ("constant_rate", "variable_rate"), 1.0, 10.0, 4),
    "standard": Preset("standard", (32, 64, 128, 256), 10, 100,
                       ("constant_rate", "variable_rate", "burst"), 1.0, 30.0, 8),
    "comprehensive": Preset("comprehensive", (32, 64, 128, 256, 512, 1024), 20, 200,
                            PATTERNS, 0.5, 100.0, 16),
}

# Short names a user may type for --pattern.
PATTERN_ALIASES = {"constant": "constant_rate", "variable": "variable_rate", "burst": "burst",
                   "warmup": "warmup"}


def pattern_name(text: str) -> str:
    """`constant` or `constant_rate` -> `constant_rate`; ValueError for an unknown pattern."""
    name = PATTERN_ALIASES.get(text, text)
    if name not in PATTERNS:
        known = ", ".join(PATTERN_ALIASES)
        raise ValueError(f"unknown pattern {text!r} (known: {known})")
    return name


def _number(value: float) -> str:
    return f"{value:g}"


def mock_model_id(pattern: str, min_ms: float | None = None, max_ms: float | None = None) -> str:
    if min_ms is None or max_ms is None:
        return f"mock/{pattern}"
    return f"mock/{pattern}?min_ms={_number(min_ms)}&max_ms={_number(max_ms)}"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None
