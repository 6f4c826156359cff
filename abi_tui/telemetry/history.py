"""The last N telemetry samples, oldest first."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

_V = TypeVar("_V")

Sample = dict[str, Any]


class TelemetryHistory:
    """A bounded ring of samples, safe to append from the sampler thread while others read.

    The lock matters: iterating a deque while another thread appends raises RuntimeError.
    """

    def __init__(self, maxlen: int = 300) -> None:
        self._samples: deque[Sample] = deque(maxlen=max(1, int(maxlen)))
        self._lock = threading.Lock()

    @property
    def maxlen(self) -> int:
        return self._samples.maxlen or 0

    def __len__(self) -> int:
        return len(self._samples)

    def append(self, sample: Sample) -> None:
        with self._lock:
            self._samples.append(sample)

    def latest(self) -> Sample | None:
        with self._lock:
            return self._samples[-1] if self._samples else None

    def last(self, n: int | None = None) -> list[Sample]:
        """The most recent `n` samples (all when None), oldest first."""
        with self._lock:
            if n is None or n >= len(self._samples):
                return list(self._samples)
            if n <= 0:
                return []
            return list(self._samples)[-n:]

    def values(self, pick: Callable[[Sample], _V], n: int | None = None) -> list[_V | None]:
        """One series for a chart, e.g. `values(lambda s: s["gpu"]["gpus"][0]["power_w"])`.

        A sample the picker cannot read (no GPU that second, missing key) gives None, so the
        series keeps one point per sample and gaps stay visible.
        """
        series: list[_V | None] = []
        for sample in self.last(n):
            try:
                series.append(pick(sample))
            except (KeyError, IndexError, TypeError):
                series.append(None)
        return series

    def clear(self) -> None:
        with self._lock:
            self._samples.clear()
