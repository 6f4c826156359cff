"""Per-persona counters and latency percentiles for `/api/v1/personas/metrics`.

A plain, thread-safe object: the server records into it from request handlers and worker
threads; `/metrics` (prometheus_client) can read `snapshot()` or mirror `record()` calls.
Percentiles are over the last `window` requests (1000), so they follow the current model and
load rather than the whole uptime.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from abi_tui.personas.catalogue import PERSONA_IDS

WINDOW = 1000
PERCENTILES = (50, 90, 99)


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return sorted_values[0]
    rank = (len(sorted_values) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclass
class _PersonaStats:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    ttft_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))


def _summary(values: Iterable[float]) -> dict[str, Any]:
    ordered = sorted(values)
    out: dict[str, Any] = {"count": len(ordered)}
    for pct in PERCENTILES:
        value = percentile(ordered, pct)
        out[f"p{pct}"] = None if value is None else round(value, 3)
    out["mean"] = round(sum(ordered) / len(ordered), 3) if ordered else None
    return out


class PersonaMetrics:
    """Requests, errors, tokens and latency p50/p90/p99 per persona."""

    def __init__(self, personas: Iterable[str] = PERSONA_IDS, window: int = WINDOW) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._stats: dict[str, _PersonaStats] = {p: self._new() for p in personas}

    def _new(self) -> _PersonaStats:
        return _PersonaStats(latency_ms=deque(maxlen=self.window),
                             ttft_ms=deque(maxlen=self.window))

    def record(self, persona: str, *, latency_ms: float | None = None,
               ttft_ms: float | None = None, prompt_tokens: int = 0,
               completion_tokens: int = 0, error: bool = False) -> None:
        """One finished request (successful or not). Unknown persona ids get their own row."""
        with self._lock:
            stats = self._stats.get(persona)
            if stats is None:
                stats = self._stats[persona] = self._new()
            stats.requests += 1
            stats.errors += bool(error)
            stats.prompt_tokens += max(0, int(prompt_tokens))
            stats.completion_tokens += max(0, int(completion_tokens))
            if latency_ms is not None and math.isfinite(latency_ms):
                stats.latency_ms.append(float(latency_ms))
            if ttft_ms is not None and math.isfinite(ttft_ms):
                stats.ttft_ms.append(float(ttft_ms))

    @contextmanager
    def track(self, persona: str) -> Iterator[_Tracker]:
        """Time a request; an exception counts as an error and propagates.

        with metrics.track("aviva") as t:
            ...  # generate
            t.tokens(prompt=12, completion=80); t.first_token()
        """
        tracker = _Tracker()
        error = False
        try:
            yield tracker
        except BaseException:
            error = True
            raise
        finally:
            self.record(persona, latency_ms=tracker.elapsed_ms(), ttft_ms=tracker.ttft_ms,
                        prompt_tokens=tracker.prompt_tokens,
                        completion_tokens=tracker.completion_tokens,
                        error=error or tracker.failed)

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready: {"window", "personas": {id: {requests, errors, ..., latency_ms}}, "total"}."""
        with self._lock:
            rows = {p: (s.requests, s.errors, s.prompt_tokens, s.completion_tokens,
                        list(s.latency_ms), list(s.ttft_ms)) for p, s in self._stats.items()}
        personas: dict[str, Any] = {}
        for persona, (requests, errors, prompt, completion, latency, ttft) in rows.items():
            personas[persona] = {
                "requests": requests,
                "errors": errors,
                "error_rate": round(errors / requests, 4) if requests else 0.0,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "latency_ms": _summary(latency),
                "ttft_ms": _summary(ttft),
            }
        total = {key: sum(row[key] for row in personas.values())
                 for key in ("requests", "errors", "prompt_tokens", "completion_tokens")}
        return {"window": self.window, "personas": personas, "total": total}

    def reset(self) -> None:
        with self._lock:
            self._stats = {p: self._new() for p in self._stats}


class _Tracker:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.ttft_ms: float | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.failed = False

    def first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self.started) * 1000.0

    def tokens(self, *, prompt: int = 0, completion: int = 0) -> None:
        self.prompt_tokens, self.completion_tokens = prompt, completion

    def fail(self) -> None:
        """Count this request as an error without raising (e.g. an error sent in-stream)."""
        self.failed = True

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0
