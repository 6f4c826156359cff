"""Per-persona metrics: counters, tokens and latency percentiles over the last 1000 requests."""

from __future__ import annotations

import json
import threading

import pytest

from abi_tui.personas.metrics import PersonaMetrics, percentile


def test_percentile_interpolates_like_numpy():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0


def test_snapshot_counts_per_persona():
    metrics = PersonaMetrics()
    for ms in range(1, 101):
        metrics.record("aviva", latency_ms=float(ms), prompt_tokens=10, completion_tokens=20)
    metrics.record("abbey", latency_ms=5.0, ttft_ms=1.5, error=True)
    snap = json.loads(json.dumps(metrics.snapshot()))
    aviva = snap["personas"]["aviva"]
    assert aviva["requests"] == 100 and aviva["errors"] == 0
    assert (aviva["prompt_tokens"], aviva["completion_tokens"]) == (1000, 2000)
    assert aviva["latency_ms"]["p50"] == pytest.approx(50.5)
    assert aviva["latency_ms"]["p90"] == pytest.approx(90.1)
    assert aviva["latency_ms"]["p99"] == pytest.approx(99.01)
    abbey = snap["personas"]["abbey"]
    assert abbey["errors"] == 1 and abbey["error_rate"] == 1.0
    assert abbey["ttft_ms"]["p50"] == 1.5
    assert snap["personas"]["abi"]["latency_ms"]["p50"] is None
    assert snap["total"]["requests"] == 101
    assert snap["window"] == 1000


def test_percentiles_cover_only_the_last_thousand():
    metrics = PersonaMetrics()
    for _ in range(1000):
        metrics.record("abi", latency_ms=1000.0)
    for _ in range(1000):
        metrics.record("abi", latency_ms=1.0)
    snap = metrics.snapshot()["personas"]["abi"]
    assert snap["requests"] == 2000
    assert snap["latency_ms"]["count"] == 1000
    assert snap["latency_ms"]["p99"] == 1.0


def test_track_times_requests_and_counts_errors():
    metrics = PersonaMetrics()
    with metrics.track("aviva") as t:
        t.first_token()
        t.tokens(prompt=3, completion=4)
    with pytest.raises(RuntimeError), metrics.track("aviva"):
        raise RuntimeError("backend failed")
    with metrics.track("abbey") as t:
        t.fail()
    snap = metrics.snapshot()["personas"]
    assert snap["aviva"]["requests"] == 2 and snap["aviva"]["errors"] == 1
    assert snap["aviva"]["completion_tokens"] == 4
    assert snap["aviva"]["ttft_ms"]["count"] == 1
    assert snap["abbey"]["errors"] == 1


def test_unknown_personas_and_bad_values_do_not_break_it():
    metrics = PersonaMetrics()
    metrics.record("custom", latency_ms=float("nan"), prompt_tokens=-5)
    snap = metrics.snapshot()["personas"]["custom"]
    assert snap["requests"] == 1 and snap["prompt_tokens"] == 0
    assert snap["latency_ms"]["count"] == 0
    metrics.reset()
    assert metrics.snapshot()["total"]["requests"] == 0


def test_recording_from_many_threads():
    metrics = PersonaMetrics()

    def work() -> None:
        for i in range(500):
            metrics.record("abbey", latency_ms=float(i), completion_tokens=1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snap = metrics.snapshot()["personas"]["abbey"]
    assert snap["requests"] == 4000 and snap["completion_tokens"] == 4000
    assert snap["latency_ms"]["count"] == 1000
