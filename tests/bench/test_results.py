"""Saving, listing, reloading and comparing runs; CSV files; the console report."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from abi_tui.bench import compare, list_runs, load_run, save_result
from abi_tui.bench.encoding import measure_encoding, sample_tokens
from abi_tui.bench.loadgen import LoadSpec
from abi_tui.bench.records import RequestRecord, ServerTimings
from abi_tui.bench.report import REQUEST_FIELDS, render
from abi_tui.bench.results import BenchResult, ScenarioResult
from abi_tui.bench.stats import DEFINITIONS, MockDelays, summarize


def make_result(run_id: str, gap_ms: float, created: str, t0: float = 100.0) -> BenchResult:
    mock = MockDelays("constant_rate", gap_ms, gap_ms, 42)
    records = []
    for i in range(5):
        sent = t0 + 1 + i * 0.2
        times = [sent + (gap_ms + 1) / 1000 * (k + 1) for k in range(4)]
        records.append(RequestRecord(index=i, max_tokens=4, seed=42 + i, sent_at=sent, token_times=times,
                                     ended_at=times[-1], usage_completion_tokens=4, finish_reason="length",
                                     server=ServerTimings(gap_ms, gap_ms * 4, 1000 / gap_ms), bytes_received=300,
                                     status=200))
    records.append(RequestRecord(index=5, max_tokens=4, sent_at=t0 + 2, ended_at=t0 + 2.01, status=429,
                                 error="429 queue_full: the queue is full"))
    scenario = ScenarioResult("constant_rate", "mock/constant_rate?min_ms=5&max_ms=5", mock,
                              LoadSpec("concurrency", 2), [4], 1, 1.0, 2.01, records,
                              summarize(records, mock=mock, slo={"ttft_ms": 50.0}))
    return BenchResult(run_id=run_id, created=created, config={"preset": None}, target={"url": "http://x"},
                       environment={"cpu_count": 2}, definitions=dict(DEFINITIONS), scenarios=[scenario],
                       encoding=None, telemetry={"gpu": {"available": False, "reason": "no GPU"}}, sweep=None,
                       duration_s=2.5, abi_version="0.1.0", t0=t0)


def test_save_list_load_roundtrip(tmp_path: Path) -> None:
    older = make_result("run-a", 5.0, "2026-01-01T10:00:00+00:00")
    newer = make_result("run-b", 10.0, "2026-01-02T10:00:00+00:00")
    paths = save_result(older, tmp_path)
    save_result(newer, tmp_path)
    (tmp_path / "junk.json").write_text("{not json")
    assert set(paths) == {"json", "csv", "summary_csv"} and all(Path(p).exists() for p in paths.values())

    runs = list_runs(tmp_path)
    assert [r.run_id for r in runs] == ["run-b", "run-a"]  # newest first, junk skipped
    assert runs[1].requests == 6 and runs[1].errors == 1 and runs[1].models == ["mock/constant_rate?min_ms=5&max_ms=5"]

    loaded = load_run(paths["json"])
    original = older.scenarios[0]
    again = loaded.scenarios[0]
    # The per-request samples give the same statistics back.
    recomputed = summarize(again.records, mock=again.mock, slo={"ttft_ms": 50.0})
    for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "requests", "output_tokens", "goodput"):
        assert recomputed[key] == original.summary[key], key
    assert again.summary == json.loads(json.dumps(original.summary))


def test_compare_marks_the_better_run() -> None:
    a = make_result("a", 5.0, "2026-01-01T10:00:00+00:00")
    b = make_result("b", 10.0, "2026-01-02T10:00:00+00:00")
    deltas = {d.metric: d for d in compare(a, b)}
    itl = deltas["itl_ms.p50"]
    assert itl.a == pytest.approx(6.0) and itl.b == pytest.approx(11.0)
    assert itl.better == "a" and itl.delta == pytest.approx(5.0)
    assert deltas["e2e_ms.p50"].better == "a" and deltas["e2e_ms.p50"].ratio > 1
    assert deltas["requests.errors"].better is None  # equal


def test_csv_files(tmp_path: Path) -> None:
    result = make_result("run-c", 5.0, "2026-01-01T10:00:00+00:00")
    paths = save_result(result, tmp_path)
    with open(paths["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == REQUEST_FIELDS and len(rows) == 6
    assert float(rows[0]["ttft_ms"]) == pytest.approx(6.0) and rows[0]["server_ttft_ms"] == "5.0"
    assert rows[5]["error"].startswith("429") and rows[5]["ttft_ms"] == ""
    with open(paths["summary_csv"], newline="") as handle:
        summary = {(r["scenario"], r["metric"]): r for r in csv.DictReader(handle)}
    assert float(summary[("constant_rate", "itl_ms")]["p50"]) == pytest.approx(6.0)
    assert summary[("constant_rate", "errors")]["value"] == "1"


def test_console_report_has_tables_and_definitions() -> None:
    out = io.StringIO()
    render(make_result("run-d", 5.0, "2026-01-01T10:00:00+00:00"), Console(file=out, width=100))
    text = out.getvalue()
    for needle in ("Summary", "TTFT", "ITL", "TPOT", "E2E", "p99", "server TTFT", "ITL overhead",
                   "Definitions", "ttft_ms: Time to first token", "N/A — no GPU"):
        assert needle in text, needle


async def test_encoding_figures_from_the_servers_encoders() -> None:
    figures = await measure_encoding(sample_tokens(300), rounds=2)
    assert figures["tokens"] == 300
    for route in ("chat", "completions", "abi"):
        sse = figures["sse"][route]
        assert sse["ns_per_token"] > 0 and sse["bytes_ratio"] > 1
    # abi's events are leaner than OpenAI chunks; a WS frame adds 2 header bytes to its JSON.
    assert figures["sse"]["abi"]["bytes_per_token"] < figures["sse"]["chat"]["bytes_per_token"]
    assert figures["ws"]["ns_per_message"] > 0 and figures["ws"]["bytes_ratio"] > 1
