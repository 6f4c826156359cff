"""Metric definitions and statistics, the same for every transport and server.

Percentiles interpolate linearly between the closest ranks (numpy's default, as in
`vllm bench serve`). Failed requests count as errors and stay out of every latency figure.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from abi_tui.backends.mock_patterns import token_delay_ms
from abi_tui.bench.records import RequestRecord

PERCENTILES = (50, 90, 95, 99)

# Printed with every result and stored in its JSON: what each number means, exactly.
DEFINITIONS: dict[str, str] = {
    "ttft_ms": "Time to first token: client send -> arrival of the first content token "
               "(a request's wait in the server's queue is included).",
    "itl_ms": "Inter-token latency: gap between the arrivals of two successive content tokens "
              "of one stream; percentiles over every gap of every request. Tokens read in one "
              "network read have a gap of 0.",
    "tpot_ms": "Time per output token: (E2E - TTFT) / (tokens - 1), one value per request with "
               "2 or more tokens.",
    "e2e_ms": "End-to-end latency: client send -> end of the stream (end event, [DONE]).",
    "stream_tokens_per_s": "Output rate of one stream: (tokens - 1) / (E2E - TTFT) = 1000 / TPOT; "
                           "the server's tokens_per_s is the same formula on its clock.",
    "output_tokens_per_s": "Aggregate output rate: output tokens of all successful requests / "
                           "phase duration (first send -> last end). Tokens are the server's "
                           "usage count when it sends one, else the token events.",
    "requests_per_s": "Successful requests / phase duration.",
    "errors": "Requests that got an HTTP error, an error event, a broken or timed-out stream; "
              "they are left out of every latency figure.",
    "goodput": "Requests that meet every SLO bound (ttft: TTFT; itl: the request's largest "
               "gap; tpot: TPOT; e2e: E2E), per second and as a fraction of all requests.",
    "pipeline_overhead_ms": "Mock models only: measured - configured delay. itl: per gap, "
                            "against the delay the mock sleeps before that token; ttft: TTFT - "
                            "the first token's delay; e2e: E2E - the sum of the delays. The mock "
                            "sleeps to absolute deadlines, so a steady pipeline shows ~0 on itl "
                            "and its fixed per-request cost on ttft.",
    "server": "The server's own timings from the stream's end event (abi.end / WebSocket end: "
              "ttft_ms and total_ms from the request's arrival, tokens_per_s), beside the "
              "client's; *_gap_ms = client - server = transport, encoding and client cost.",
    "sse_encoding": "The server's SSE encoders run in-process on the benchmark's tokens: ns "
                    "per token, and encoded bytes / raw UTF-8 token bytes.",
    "ws_framing": "JSON message + RFC 6455 frame as the server sends each token, run in-process "
                  "through aiohttp's frame writer: ns per message, and bytes / raw token bytes.",
    "wire_bytes_per_token": "Bytes the client read for a stream (chunked HTTP framing and "
                            "events, or WebSocket frames) / its output tokens.",
    "tokens_per_joule": "Output tokens / GPU energy over the run (NVML total energy counter "
                        "differences; power integrated over time where the counter is missing).",
    "percentiles": "Linear interpolation between closest ranks (numpy default), as vllm bench.",
}

SLO_KEYS = {"ttft": "ttft_ms", "itl": "itl_ms", "tpot": "tpot_ms", "e2e": "e2e_ms"}
_UNITS = {"ms": 1.0, "s": 1000.0, "us": 0.001}


def parse_slo(text: str) -> dict[str, float]:
    """`ttft=200ms,itl=50ms` -> {"ttft_ms": 200.0, "itl_ms": 50.0}; a bare number is in ms."""
    slo: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in SLO_KEYS:
            raise ValueError(f"bad SLO {part!r}: use KEY=VALUE with KEY one of {', '.join(SLO_KEYS)}")
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|us)?\s*", value)
        if not match:
            raise ValueError(f"bad SLO value {value!r}: a number with ms, s or us, e.g. 200ms")
        slo[SLO_KEYS[key]] = float(match.group(1)) * _UNITS[match.group(2) or "ms"]
    if not slo:
        raise ValueError("empty SLO: use e.g. ttft=200ms,itl=50ms")
    return slo


def _round(value: float) -> float:
    return round(float(value), 3)


def distribution(values: Sequence[float]) -> dict[str, float] | None:
    """count, min, mean, p50, p90, p95, p99, max of the values; None when there are none."""
    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if data.size == 0:
        return None
    out = {"count": int(data.size), "min": _round(data.min()), "mean": _round(data.mean())}
    for p, value in zip(PERCENTILES, np.percentile(data, PERCENTILES), strict=True):
        out[f"p{p}"] = _round(value)
    out["max"] = _round(data.max())
    return out


@dataclass(frozen=True)
class MockDelays:
    """The delays a `mock/<pattern>` model is configured with, to compare measurements against."""

    pattern: str
    min_ms: float
    max_ms: float
    seed: int

    def delays_ms(self, max_tokens: int, seed: int | None) -> list[float]:
        """The sleep before each token, replaying the mock's own generator (same seed, order)."""
        rng = random.Random(self.seed if seed is None else seed)
        return [token_delay_ms(self.pattern, i, max_tokens, self.min_ms, self.max_ms, rng)
                for i in range(max_tokens)]

    def to_dict(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "min_ms": self.min_ms, "max_ms": self.max_ms, "seed": self.seed}


def mock_delays(model: str) -> MockDelays | None:
    """The configured delays of a mock model id, None for any other model."""
    if not model.startswith("mock/"):
        return None
    from abi_tui.backends.mock import MockSpec
    from abi_tui.errors import AbiError

    try:
        spec = MockSpec.parse(model)
    except AbiError as exc:
        raise ValueError(exc.message) from None
    return MockDelays(spec.pattern, spec.min_ms, spec.max_ms, spec.seed)


@dataclass
class RequestMetrics:
    ttft_ms: float | None
    e2e_ms: float | None
    tpot_ms: float | None
    itl_ms: list[float]
    stream_tokens_per_s: float | None
    tokens: int


def request_metrics(record: RequestRecord) -> RequestMetrics:
    times = record.token_times
    ttft = (times[0] - record.sent_at) * 1000 if times else None
    e2e = (record.ended_at - record.sent_at) * 1000 if record.ended_at is not None else None
    itl = [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False)]
    tokens = record.tokens
    tpot = rate = None
    if ttft is not None and e2e is not None and tokens > 1:
        tpot = (e2e - ttft) / (tokens - 1)
        rate = 1000 / tpot if tpot > 0 else None
    return RequestMetrics(ttft, e2e, tpot, itl, rate, tokens)


def meets_slo(metrics: RequestMetrics, slo: dict[str, float]) -> bool:
    values = {"ttft_ms": metrics.ttft_ms, "tpot_ms": metrics.tpot_ms, "e2e_ms": metrics.e2e_ms,
              "itl_ms": max(metrics.itl_ms) if metrics.itl_ms else None}
    # A metric a request cannot have (TPOT of a 1-token answer) does not count against it.
    return all(values[key] is None or values[key] <= bound for key, bound in slo.items())


def phase_duration_s(records: Sequence[RequestRecord]) -> float:
    if not records:
        return 0.0
    start = min(r.sent_at for r in records)
    end = max(r.ended_at if r.ended_at is not None else r.sent_at for r in records)
    return max(end - start, 0.0)


def error_kind(error: str) -> str:
    """Group errors by their start (`404 model_not_found`, `timeout`, `connection`)."""
    return error.split(":", 1)[0].strip()[:80]


def pipeline_overhead(records: Sequence[RequestRecord], mock: MockDelays) -> dict[str, Any]:
    itl_diff: list[float] = []
    ttft_diff: list[float] = []
    e2e_diff: list[float] = []
    configured_gaps: list[float] = []
    skipped = 0
    for record in records:
        delays = mock.delays_ms(record.max_tokens, record.seed)
        times = record.token_times
        if not times or len(times) > len(delays):
            skipped += 1
            continue
        ttft_diff.append((times[0] - record.sent_at) * 1000 - delays[0])
        for i in range(1, len(times)):
            configured_gaps.append(delays[i])
            itl_diff.append((times[i] - times[i - 1]) * 1000 - delays[i])
        e2e_diff.append((times[-1] - record.sent_at) * 1000 - sum(delays[:len(times)]))
    itl = distribution(itl_diff)
    return {
        "available": bool(itl_diff),
        "reason": None if itl_diff else "no request with two or more tokens",
        "mock": mock.to_dict(),
        "configured_itl_ms": _round(float(np.mean(configured_gaps))) if configured_gaps else None,
        "itl_ms": itl["mean"] if itl else None,
        "itl_diff_ms": itl,
        "ttft_diff_ms": distribution(ttft_diff),
        "e2e_diff_ms": distribution(e2e_diff),
        "requests_skipped": skipped,
    }


def summarize(records: Sequence[RequestRecord], *, mock: MockDelays | None = None,
              slo: dict[str, float] | None = None) -> dict[str, Any]:
    """Every figure of one phase, as a JSON-ready dict (see docs/BENCH.md)."""
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    metrics = [request_metrics(r) for r in ok]
    duration = phase_duration_s(records)
    tokens = sum(m.tokens for m in metrics)
    all_itl = [gap for m in metrics for gap in m.itl_ms]

    summary: dict[str, Any] = {
        "requests": {"total": len(records), "completed": len(ok), "errors": len(failed),
                     "error_kinds": dict(Counter(error_kind(r.error or "unknown") for r in failed))},
        "duration_s": _round(duration),
        "requests_per_s": _round(len(ok) / duration) if duration > 0 else None,
        "output_tokens": tokens,
        "output_tokens_per_s": _round(tokens / duration) if duration > 0 else None,
        "ttft_ms": distribution([m.ttft_ms for m in metrics if m.ttft_ms is not None]),
        "itl_ms": distribution(all_itl),
        "tpot_ms": distribution([m.tpot_ms for m in metrics if m.tpot_ms is not None]),
        "e2e_ms": distribution([m.e2e_ms for m in metrics if m.e2e_ms is not None]),
        "stream_tokens_per_s": distribution([m.stream_tokens_per_s for m in metrics
                                             if m.stream_tokens_per_s is not None]),
    }

    if slo:
        good = [m for m in metrics if meets_slo(m, slo)]
        summary["goodput"] = {
            "slo": dict(slo), "good_requests": len(good),
            "fraction": _round(len(good) / len(records)) if records else None,
            "requests_per_s": _round(len(good) / duration) if duration > 0 else None,
            "output_tokens_per_s": _round(sum(m.tokens for m in good) / duration) if duration > 0 else None,
        }
    else:
        summary["goodput"] = None

    with_server = [(r, m) for r, m in zip(ok, metrics, strict=True) if r.server is not None]
    if with_server:
        summary["server"] = {
            "available": True, "reason": None,
            "ttft_ms": distribution([r.server.ttft_ms for r, _ in with_server if r.server.ttft_ms is not None]),
            "total_ms": distribution([r.server.total_ms for r, _ in with_server if r.server.total_ms is not None]),
            "tokens_per_s": distribution([r.server.tokens_per_s for r, _ in with_server
                                          if r.server.tokens_per_s]),
            "ttft_gap_ms": distribution([m.ttft_ms - r.server.ttft_ms for r, m in with_server
                                         if m.ttft_ms is not None and r.server.ttft_ms is not None]),
            "e2e_gap_ms": distribution([m.e2e_ms - r.server.total_ms for r, m in with_server
                                        if m.e2e_ms is not None and r.server.total_ms is not None]),
        }
    else:
        summary["server"] = {"available": False,
                             "reason": "the stream carries no server timings (only abi's /api/stream "
                                       "and WebSocket end events do)" if ok else "no successful request"}

    if mock is not None:
        summary["pipeline_overhead"] = pipeline_overhead(ok, mock)
    else:
        summary["pipeline_overhead"] = {"available": False,
                                        "reason": "not a mock model: no configured delay to compare with"}

    wire_bytes = sum(r.bytes_received for r in ok)
    summary["wire"] = {"bytes": wire_bytes,
                       "bytes_per_token": _round(wire_bytes / tokens) if tokens else None}
    lags = [(r.sent_at - r.scheduled_at) * 1000 for r in records if r.scheduled_at is not None]
    summary["schedule_lag_ms"] = distribution(lags)
    return summary
