"""Download progress events: state, bytes, rate over a 10 s window, ETA."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class DownloadState(StrEnum):
    QUEUED = "queued"
    CONNECTING = "connecting"
    DOWNLOADING = "downloading"
    STALLED = "stalled"
    VERIFYING = "verifying"
    DONE = "done"
    FAILED = "failed"
    PAUSED = "paused"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (DownloadState.DONE, DownloadState.FAILED, DownloadState.CANCELLED)


@dataclass
class DownloadProgress:
    """One progress event. `downloaded` counts bytes on disk, including those of a resumed part."""

    state: DownloadState = DownloadState.QUEUED
    downloaded: int = 0
    total: int | None = None
    rate_bps: float = 0.0
    eta_s: float | None = None
    name: str = ""
    spec: str = ""
    file: str = ""
    files_done: int = 0
    files_total: int = 0
    message: str | None = None
    error: str | None = None
    error_code: str | None = None
    path: str | None = None
    timestamp: float = field(default_factory=time.time)

    @property
    def fraction(self) -> float | None:
        return self.downloaded / self.total if self.total else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value, "downloaded": self.downloaded, "total": self.total,
            "rate_bps": round(self.rate_bps, 1), "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "name": self.name, "spec": self.spec, "file": self.file, "files_done": self.files_done,
            "files_total": self.files_total, "message": self.message, "error": self.error,
            "error_code": self.error_code, "path": self.path,
        }


class RateMeter:
    """Bytes per second over the last `window_s` seconds, like Ollama's progress bar: a rate
    from the whole download would hide a connection that just slowed down or stalled."""

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._samples: deque[tuple[float, int]] = deque()

    def reset(self) -> None:
        self._samples.clear()

    def add(self, downloaded: int) -> None:
        now = self.clock()
        self._samples.append((now, downloaded))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        # A window that ends before now (no sample lately) counts the silence too.
        span = max(self.clock(), t1) - t0
        return max(0.0, (d1 - d0) / span) if span > 0 else 0.0

    def eta(self, downloaded: int, total: int | None) -> float | None:
        rate = self.rate()
        if total is None or rate <= 0:
            return None
        return max(0.0, (total - downloaded) / rate)
