"""The circuit breaker of one endpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from abi_tui.backends.remote.errors import CircuitOpen

log = logging.getLogger(__name__)


class CircuitBreaker:
    """closed -> (N consecutive failures) -> open for `open_s` -> half-open: one probe request;
    its success closes the breaker, its failure opens it for another window."""

    def __init__(self, name: str, failures: int = 5, open_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.threshold = max(1, failures)
        self.open_s = open_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self.last_error = ""

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "open" if self.clock() - self.opened_at < self.open_s else "half_open"

    @property
    def retry_after(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(1.0, self.open_s - (self.clock() - self.opened_at))

    def _rejection(self) -> CircuitOpen:
        return CircuitOpen(f"{self.name} is unavailable: {self.failures} failures in a row "
                           f"(last: {self.last_error}); the circuit breaker lets requests through again "
                           f"in {self.retry_after:.0f} s", retry_after=self.retry_after)

    def check(self) -> None:
        """Raise CircuitOpen when no request may go now (takes nothing)."""
        state = self.state
        if state == "open" or (state == "half_open" and self.probing):
            raise self._rejection()

    def acquire(self) -> bool:
        """Before an attempt: raise CircuitOpen, or return True when this attempt is the probe."""
        self.check()
        if self.state == "half_open":
            self.probing = True
            return True
        return False

    def record_success(self) -> None:
        if self.opened_at is not None:
            log.info("%s: circuit breaker closed", self.name)
        self.failures, self.opened_at, self.probing = 0, None, False

    def record_failure(self, message: str, probe: bool) -> None:
        self.failures += 1
        self.last_error = message
        if probe or self.failures >= self.threshold:
            if self.opened_at is None or probe:
                log.warning("%s: circuit breaker open for %.0f s after %d failures: %s",
                            self.name, self.open_s, self.failures, message)
            self.opened_at, self.probing = self.clock(), False

    def release(self, probe: bool) -> None:
        """An attempt that ended with no verdict on the provider's health (cancelled, 4xx)."""
        if probe:
            self.probing = False

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "failures": self.failures,
                "retry_after_s": round(self.retry_after, 1) if self.state != "closed" else 0}
