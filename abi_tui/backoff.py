"""The one backoff policy: how long to wait before the next attempt, and when to stop waiting
longer. Used by the client's reconnects, the remote backends' retries, model downloads and the
NVML reader.

`Backoff(initial, factor, maximum, jitter)`: attempt n waits initial * factor**(n-1), capped at
`maximum`, spread by +-jitter (a fraction) so that many clients retrying the same server do not
land in step; a `Retry-After` from the server is honoured up to `maximum` (the caller decides
whether a longer one is worth waiting for). `next()` counts attempts; `reset()` after a success.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime


class Backoff:
    def __init__(self, initial: float = 0.25, factor: float = 2.0, maximum: float = 5.0,
                 jitter: float = 0.2, rand: Callable[[], float] = random.random) -> None:
        self.initial, self.factor, self.maximum, self.jitter = initial, factor, maximum, jitter
        self.rand = rand  # a test passes a fixed draw
        self.attempts = 0

    def __repr__(self) -> str:
        return (f"Backoff(initial={self.initial}, factor={self.factor}, maximum={self.maximum}, "
                f"jitter={self.jitter}, attempts={self.attempts})")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait before attempt number `attempt` (1 = the first retry); no state changes."""
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))
        spread = 1.0 + self.jitter * (2 * self.rand() - 1) if self.jitter else 1.0
        wait = min(self.maximum, base * spread)
        if retry_after is not None:
            wait = max(wait, min(self.maximum, retry_after))
        return max(0.0, wait)

    def next(self, retry_after: float | None = None) -> float:
        self.attempts += 1
        return self.delay(self.attempts, retry_after)

    def reset(self) -> None:
        self.attempts = 0


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds a server asked us to wait: `retry-after-ms` (OpenAI), else `Retry-After` in
    seconds or as an HTTP date; None when neither says anything usable."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
