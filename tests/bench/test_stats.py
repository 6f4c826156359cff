"""Metric definitions on hand-made records: no server, no clock."""

from __future__ import annotations

import random

import numpy as np
import pytest

from abi_tui.backends.mock_patterns import token_delay_ms
from abi_tui.bench.records import RequestRecord, ServerTimings
from abi_tui.bench.stats import (
    MockDelays,
    distribution,
    meets_slo,
    mock_delays,
    parse_slo,
    request_metrics,
    summarize,
)


def record(index: int, sent: float, gaps_ms: list[float], ttft_ms: float, *, error: str | None = None,
           seed: int | None = None, server: ServerTimings | None = None) -> RequestRecord:
    times = [sent + ttft_ms / 1000]
    for gap in gaps_ms:
        times.append(times[-1] + gap / 1000)
    return RequestRecord(index=index, max_tokens=len(times), seed=seed, sent_at=sent, token_times=times,
                         ended_at=times[-1], error=error, server=server, bytes_received=100 * len(times))


def test_distribution_matches_numpy_linear_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    dist = distribution(values)
    assert dist is not None
    assert dist["count"] == 100 and dist["min"] == 1 and dist["max"] == 100
    for p in (50, 90, 95, 99):
        assert dist[f"p{p}"] == pytest.approx(np.percentile(values, p), abs=1e-3)
    assert distribution([]) is None


def test_request_metrics_follow_the_definitions() -> None:
    r = record(0, 10.0, [5, 5, 10], ttft_ms=20)
    m = request_metrics(r)
    assert m.ttft_ms == pytest.approx(20)
    assert m.e2e_ms == pytest.approx(40)
    assert m.itl_ms == pytest.approx([5, 5, 10])
    assert m.tpot_ms == pytest.approx((40 - 20) / 3)  # (E2E - TTFT) / (tokens - 1)
    assert m.stream_tokens_per_s == pytest.approx(1000 / m.tpot_ms)


def test_usage_count_wins_over_token_events() -> None:
    r = record(0, 0.0, [5, 5], ttft_ms=10)
    r.usage_completion_tokens = 5  # two pieces arrived merged into one event, say
    assert r.tokens == 5
    assert request_metrics(r).tpot_ms == pytest.approx((20 - 10) / 4)


def test_parse_slo_units_and_errors() -> None:
    assert parse_slo("ttft=200ms,itl=50ms") == {"ttft_ms": 200.0, "itl_ms": 50.0}
    assert parse_slo("e2e=2s, tpot=1500us") == {"e2e_ms": 2000.0, "tpot_ms": 1.5}
    assert parse_slo("ttft=30") == {"ttft_ms": 30.0}
    for bad in ("", "ttft", "latency=3ms", "ttft=fast", "ttft=-1ms"):
        with pytest.raises(ValueError):
            parse_slo(bad)


def test_goodput_counts_requests_within_every_bound() -> None:
    fast = record(0, 0.0, [5, 5, 5], ttft_ms=10)
    stall = record(1, 0.0, [5, 80, 5], ttft_ms=10)   # one 80 ms stall: fails itl=50ms
    slow_start = record(2, 0.0, [5, 5, 5], ttft_ms=300)  # fails ttft=200ms
    failed = record(3, 0.0, [5], ttft_ms=10, error="500 boom")
    slo = {"ttft_ms": 200.0, "itl_ms": 50.0}
    assert meets_slo(request_metrics(fast), slo)
    assert not meets_slo(request_metrics(stall), slo)
    assert not meets_slo(request_metrics(slow_start), slo)
    summary = summarize([fast, stall, slow_start, failed], slo=slo)
    assert summary["goodput"]["good_requests"] == 1
    assert summary["goodput"]["fraction"] == pytest.approx(0.25)
    assert summary["requests"] == {"total": 4, "completed": 3, "errors": 1, "error_kinds": {"500 boom": 1}}
    # The failed request is in no latency figure.
    assert summary["ttft_ms"]["count"] == 3


def test_mock_delays_replay_the_mock_generator() -> None:
    mock = mock_delays("mock/variable_rate?min_ms=1&max_ms=30&seed=7")
    assert mock == MockDelays("variable_rate", 1.0, 30.0, 7)
    rng = random.Random(99)
    expected = [token_delay_ms("variable_rate", i, 16, 1.0, 30.0, rng) for i in range(16)]
    assert mock.delays_ms(16, 99) == expected
    burst = MockDelays("burst", 2.0, 30.0, 42).delays_ms(16, None)
    assert [i for i, d in enumerate(burst) if d == 30.0] == [7, 15]
    assert mock_delays("gemma-3-270m") is None
    with pytest.raises(ValueError):
        mock_delays("mock/sawtooth")


def test_pipeline_overhead_is_measured_minus_configured() -> None:
    mock = MockDelays("constant_rate", 10.0, 10.0, 42)
    # Every gap 0.5 ms late against the 10 ms configured, TTFT 2 ms over the first delay.
    records = [record(i, float(i), [10.5] * 7, ttft_ms=12.0, seed=42 + i) for i in range(4)]
    overhead = summarize(records, mock=mock)["pipeline_overhead"]
    assert overhead["available"] and overhead["configured_itl_ms"] == 10.0
    assert overhead["itl_ms"] == pytest.approx(0.5)
    assert overhead["ttft_diff_ms"]["p50"] == pytest.approx(2.0)
    assert overhead["e2e_diff_ms"]["p50"] == pytest.approx(2.0 + 7 * 0.5)
    assert summarize(records)["pipeline_overhead"]["available"] is False


def test_server_timings_beside_the_clients() -> None:
    records = [record(i, 0.0, [5, 5], ttft_ms=12, server=ServerTimings(10.0, 20.0, 200.0)) for i in range(3)]
    server = summarize(records)["server"]
    assert server["available"]
    assert server["ttft_gap_ms"]["p50"] == pytest.approx(2.0)   # 12 client - 10 server
    assert server["e2e_gap_ms"]["p50"] == pytest.approx(2.0)    # 22 client - 20 server
    without = summarize([record(0, 0.0, [5], ttft_ms=5)])["server"]
    assert without["available"] is False and "server timings" in without["reason"]
