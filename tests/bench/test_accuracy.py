"""The harness measures what the mock is configured to do (issue 8's accuracy tests).

The server is `abi dash --serve` in its own process, as a user runs it. The machine may be
shared and busy, so each figure is a median or a mean over hundreds of gaps, not one reading.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request

from abi_tui.backends.mock_patterns import BURST_EVERY
from abi_tui.bench.loadgen import LoadSpec
from abi_tui.bench.runner import BenchConfig, run_benchmark
from abi_tui.bench.stats import request_metrics


def settled(server):
    """The server, once its start-up work is done: the sentence encoder and the vector store open
    on threads after /health answers, and would stretch the first requests' gaps."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with urllib.request.urlopen(server.url + "/api/v1/memory?limit=1", timeout=60) as response:
            if json.loads(response.read())["state"] in ("ready", "error"):
                return server
        time.sleep(0.2)
    raise AssertionError("the server's start-up work did not finish in 60 s")


async def test_constant_rate_10ms_itl_p50_and_pipeline_overhead(serve) -> None:
    server = settled(serve())
    result = await run_benchmark(BenchConfig(
        url=server.url, model="mock/constant_rate?min_ms=10&max_ms=10", requests=16, max_tokens=64,
        warmup=4, load=LoadSpec("concurrency", 4), measure_encoding=False))
    summary = result.scenarios[0].summary
    assert summary["requests"]["errors"] == 0
    assert summary["itl_ms"]["count"] == 16 * 63
    assert 9.0 <= summary["itl_ms"]["p50"] <= 11.0, summary["itl_ms"]
    overhead = summary["pipeline_overhead"]
    assert overhead["configured_itl_ms"] == 10.0
    assert abs(overhead["itl_ms"]) < 1.0, overhead
    # The server's own rate agrees with the configured 100 tokens/s.
    assert 90 <= summary["server"]["tokens_per_s"]["p50"] <= 110


async def test_burst_p99_is_the_long_gap(serve) -> None:
    server = settled(serve())
    result = await run_benchmark(BenchConfig(
        url=server.url, model="mock/burst?min_ms=2&max_ms=30", requests=8, max_tokens=64, warmup=1,
        load=LoadSpec("concurrency", 4), measure_encoding=False))
    summary = result.scenarios[0].summary
    per_request = [request_metrics(r).itl_ms for r in result.scenarios[0].records]
    assert all(len(gaps) == 63 for gaps in per_request)
    # The mock pauses 30 ms before every eighth token, so gaps 6, 14, ... 62 (8 of 63) are long.
    # A busy machine can stretch any gap, so each position is judged by its median over the
    # requests: the harness must put the long gaps where the server made them, and nowhere else.
    medians = [statistics.median(gaps[j] for gaps in per_request) for j in range(63)]
    pauses = [j for j in range(63) if (j + 2) % BURST_EVERY == 0]
    assert len(pauses) == 8
    assert all(medians[j] >= 20.0 for j in pauses), [medians[j] for j in pauses]
    assert all(medians[j] < 10.0 for j in range(63) if j not in pauses), medians
    assert summary["itl_ms"]["p50"] < 5.0, summary["itl_ms"]
    assert summary["itl_ms"]["p99"] >= 27.0, summary["itl_ms"]
    assert abs(summary["pipeline_overhead"]["itl_ms"]) < 1.0


async def test_queued_request_ttft_includes_its_wait(serve) -> None:
    server = settled(serve("--max-streams", "1", "--max-queue", "8"))
    result = await run_benchmark(BenchConfig(
        url=server.url, model="mock/constant_rate?min_ms=10&max_ms=10", requests=2, max_tokens=20,
        warmup=0, load=LoadSpec("concurrency", 2), measure_encoding=False))
    records = result.scenarios[0].records
    assert all(r.ok for r in records)
    first, second = sorted(records, key=lambda r: r.token_times[0])
    first_m, second_m = request_metrics(first), request_metrics(second)
    assert first_m.ttft_ms < 100
    # The second waited in the queue for the whole first answer (20 tokens x 10 ms).
    assert second_m.ttft_ms >= first_m.e2e_ms - (second.sent_at - first.sent_at) * 1000
    assert second_m.ttft_ms >= 200
    # The server's TTFT counts from the request's arrival, so it includes the wait too.
    assert second.server.ttft_ms >= 190


async def test_websocket_transport_and_server_timings(serve) -> None:
    server = settled(serve())
    result = await run_benchmark(BenchConfig(
        url=server.url, model="mock/constant_rate?min_ms=1&max_ms=1", transport="ws", requests=12,
        max_tokens=8, warmup=2, load=LoadSpec("concurrency", 6), measure_encoding=False))
    assert result.target["endpoint"] == "/api/stream/ws"
    summary = result.scenarios[0].summary
    assert summary["requests"]["completed"] == 12 and summary["output_tokens"] == 96
    assert summary["server"]["available"] and summary["server"]["ttft_ms"]["count"] == 12
    assert all(r.usage_completion_tokens == 8 and len(r.token_times) == 8 for r in result.scenarios[0].records)


async def test_chat_route_on_abi_uses_exact_usage(serve) -> None:
    server = settled(serve())
    result = await run_benchmark(BenchConfig(
        url=server.url, model="mock/constant_rate?min_ms=1&max_ms=1", route="chat", requests=4,
        max_tokens=6, warmup=1, measure_encoding=False))
    records = result.scenarios[0].records
    assert result.target["route"] == "chat"
    assert all(r.usage_completion_tokens == 6 and len(r.token_times) == 6 for r in records)
    assert result.scenarios[0].summary["server"]["available"] is False
    # An abi server's own telemetry came back, on the run's clock.
    assert result.telemetry["server"], result.telemetry["server_note"]
