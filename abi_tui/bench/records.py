"""What one benchmark request sends and what the client saw of it.

Every time is a reading of `now()` (time.monotonic, CLOCK_MONOTONIC on Linux): the same clock the
telemetry sampler stamps its samples with (`mono`), so load and telemetry line up without any
conversion. A server on the same machine stamps its /api/telemetry samples on that clock too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

now = time.monotonic


@dataclass
class RequestSpec:
    index: int
    model: str
    prompt: str
    max_tokens: int
    seed: int | None = None
    # Merged into the request body as is (temperature, logit_bias, ...).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ServerTimings:
    """The server's own view of a request, from the stream's end event (abi servers only)."""

    ttft_ms: float | None = None
    total_ms: float | None = None
    tokens_per_s: float | None = None

    @classmethod
    def from_payload(cls, timings: dict[str, Any] | None) -> ServerTimings | None:
        if not isinstance(timings, dict):
            return None
        return cls(timings.get("ttft_ms"), timings.get("total_ms"), timings.get("tokens_per_s"))

    def to_dict(self) -> dict[str, Any]:
        return {"ttft_ms": self.ttft_ms, "total_ms": self.total_ms, "tokens_per_s": self.tokens_per_s}


@dataclass
class RequestRecord:
    index: int
    max_tokens: int
    seed: int | None = None
    # Open loop: when the schedule wanted the request sent (None in a closed loop).
    scheduled_at: float | None = None
    sent_at: float = 0.0
    # Arrival time of every content token (tokens read in one network read share a time).
    token_times: list[float] = field(default_factory=list)
    ended_at: float | None = None
    usage_completion_tokens: int | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    server: ServerTimings | None = None
    bytes_received: int = 0
    status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.ended_at is not None

    @property
    def first_token_at(self) -> float | None:
        return self.token_times[0] if self.token_times else None

    @property
    def tokens(self) -> int:
        """Output tokens: the server's exact usage count when it sent one, else token events."""
        if self.usage_completion_tokens is not None:
            return self.usage_completion_tokens
        return len(self.token_times)

    def to_dict(self, t0: float) -> dict[str, Any]:
        """Times relative to the run's start (seconds) and to this request's send (ms)."""
        sent = self.sent_at
        return {
            "index": self.index,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "scheduled_s": None if self.scheduled_at is None else round(self.scheduled_at - t0, 6),
            "sent_s": round(sent - t0, 6),
            "token_ms": [round((t - sent) * 1000, 3) for t in self.token_times],
            "end_ms": None if self.ended_at is None else round((self.ended_at - sent) * 1000, 3),
            "tokens": self.tokens,
            "usage_completion_tokens": self.usage_completion_tokens,
            "prompt_tokens": self.prompt_tokens,
            "finish_reason": self.finish_reason,
            "server": self.server.to_dict() if self.server else None,
            "bytes": self.bytes_received,
            "status": self.status,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        """The inverse of to_dict with the run's start at 0."""
        sent = float(data["sent_s"])
        end = data.get("end_ms")
        server = data.get("server")
        return cls(
            index=int(data["index"]), max_tokens=int(data["max_tokens"]), seed=data.get("seed"),
            scheduled_at=data.get("scheduled_s"), sent_at=sent,
            token_times=[sent + ms / 1000 for ms in data.get("token_ms") or []],
            ended_at=None if end is None else sent + end / 1000,
            usage_completion_tokens=data.get("usage_completion_tokens"),
            prompt_tokens=data.get("prompt_tokens"), finish_reason=data.get("finish_reason"),
            server=ServerTimings.from_payload(server), bytes_received=int(data.get("bytes") or 0),
            status=data.get("status"), error=data.get("error"),
        )
