"""Outputs of a run: the rich console report, CSV files, and saving under $ABI_HOME/bench/."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from abi_tui.bench.figures import LATENCY_ROWS, dig, num
from abi_tui.bench.results import BenchResult, ScenarioResult
from abi_tui.bench.stats import PERCENTILES, request_metrics

COLUMNS = ("min", "mean", *(f"p{p}" for p in PERCENTILES), "max")
def latency_table(scenario: ScenarioResult) -> Table:
    table = Table(title=f"{scenario.name} — latency in ms ({scenario.load.describe()})", title_justify="left")
    table.add_column("metric", no_wrap=True)
    table.add_column("n", justify="right")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for label, path in LATENCY_ROWS:
        dist = dig(scenario.summary, *path)
        if dist:
            table.add_row(label, str(dist["count"]), *(num(dist[c]) for c in COLUMNS))
    return table


def summary_table(result: BenchResult) -> Table:
    # No vertical rules: ten columns must fit an 80-column terminal.
    table = Table(title="Summary (latencies in ms)", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0))
    table.add_column("scenario", max_width=24, overflow="ellipsis", no_wrap=True)
    for name in ("ok/err", "req/s", "tok/s", "TTFT\np50", "ITL\np50", "ITL\np99", "good\nput", "ovh\nITL",
                 "tok/J"):
        table.add_column(name, justify="right")
    for scenario in result.scenarios:
        s = scenario.summary
        goodput = s.get("goodput")
        overhead = s.get("pipeline_overhead") or {}
        energy = scenario.energy or {}
        table.add_row(
            scenario.name, f"{s['requests']['completed']}/{s['requests']['errors']}",
            num(s.get("requests_per_s"), 1), num(s.get("output_tokens_per_s"), 0),
            num(dig(s, "ttft_ms", "p50")), num(dig(s, "itl_ms", "p50")), num(dig(s, "itl_ms", "p99")),
            f"{goodput['fraction']:.0%}" if goodput and goodput.get("fraction") is not None else "-",
            num(overhead.get("itl_ms"), 3) if overhead.get("available") else "N/A",
            num(energy.get("tokens_per_joule"), 2) if energy.get("available") else "N/A",
        )
    return table


def encoding_table(encoding: dict[str, Any]) -> Table:
    table = Table(title=f"Encoding (server encoders in-process, {encoding['tokens']} tokens)", title_justify="left")
    for name in ("format", "ns/token", "bytes/token", "raw bytes", "ratio"):
        table.add_column(name, justify="left" if name == "format" else "right")
    for route, figures in encoding["sse"].items():
        table.add_row(f"SSE {route}", num(figures["ns_per_token"], 0), num(figures["bytes_per_token"], 1),
                      num(figures["raw_bytes_per_token"], 1), f"{figures['bytes_ratio']:.1f}x")
    ws = encoding["ws"]
    table.add_row("WebSocket frame", num(ws["ns_per_message"], 0), num(ws["bytes_per_message"], 1),
                  num(ws["raw_bytes_per_token"], 1), f"{ws['bytes_ratio']:.1f}x")
    return table


def render(result: BenchResult, console: Console, definitions: bool = True) -> None:
    target = result.target
    env = result.environment
    console.print(Text.assemble(
        ("abi bench streaming ", "bold"), (result.run_id, "cyan"), "\n",
        f"target {target.get('url')} ({'embedded ' if target.get('embedded') else ''}{target.get('server')} server), "
        f"{target.get('transport')} {target.get('endpoint')}, {result.duration_s:.1f} s\n",
        f"machine: {env.get('cpu_count')} CPUs, load average {env.get('load_avg_start')} -> "
        f"{env.get('load_avg_end')}, host CPU {num(env.get('host_cpu_percent_mean'), 0)} % during the run",
    ))
    console.print(summary_table(result))
    for scenario in result.scenarios:
        console.print(latency_table(scenario))
        s = scenario.summary
        notes = []
        if s["requests"]["errors"]:
            notes.append(f"errors: {s['requests']['error_kinds']}")
        if not s["server"]["available"]:
            notes.append(f"server timings N/A: {s['server']['reason']}")
        overhead = s["pipeline_overhead"]
        if overhead.get("available"):
            notes.append(f"pipeline overhead: ITL {overhead['itl_ms']:+.3f} ms per token against "
                         f"{overhead['configured_itl_ms']:.3f} ms configured")
        stream_rate = dig(s, "stream_tokens_per_s", "p50")
        if stream_rate:
            notes.append(f"per-stream rate p50: {stream_rate:.1f} tok/s")
        if s.get("wire", {}).get("bytes_per_token"):
            notes.append(f"wire: {s['wire']['bytes_per_token']:.1f} bytes per token")
        if s.get("goodput"):
            g = s["goodput"]
            notes.append(f"goodput under {g['slo']}: {g['good_requests']} requests, {num(g['requests_per_s'])} req/s")
        if notes:
            console.print(Text("  " + "\n  ".join(notes), style="dim"))
    if result.sweep:
        for sweep in result.sweep:
            console.print(f"sweep {sweep['scenario']}: best concurrency {sweep['best_concurrency']}; "
                          f"stopped: {sweep['stopped']}")
    if result.encoding:
        console.print(encoding_table(result.encoding))
    gpu = result.telemetry.get("gpu") or {}
    if gpu.get("available"):
        console.print(f"GPU ({gpu['source']}, {gpu['method']}): {gpu['energy_j']:.1f} J, mean "
                      f"{num(gpu['mean_power_w'], 1)} W, {num(gpu['tokens_per_joule'], 3)} tokens/J")
    else:
        console.print(f"GPU energy and tokens/J: N/A — {gpu.get('reason')}")
    if definitions:
        console.print(Group(Text("Definitions", style="bold"),
                            *(Text(f"  {k}: {v}", style="dim") for k, v in result.definitions.items())))
    if result.paths:
        console.print("saved: " + ", ".join(result.paths.values()))


REQUEST_FIELDS = ("run_id", "scenario", "index", "max_tokens", "seed", "scheduled_s", "sent_s", "ttft_ms",
                  "tpot_ms", "e2e_ms", "tokens", "itl_mean_ms", "itl_max_ms", "stream_tokens_per_s",
                  "server_ttft_ms", "server_total_ms", "server_tokens_per_s", "bytes", "finish_reason",
                  "status", "error")
SUMMARY_FIELDS = ("run_id", "scenario", "metric", "count", *COLUMNS, "value")


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def write_requests_csv(result: BenchResult, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, REQUEST_FIELDS)
        writer.writeheader()
        for scenario in result.scenarios:
            for record in scenario.records:
                m = request_metrics(record)
                server = record.server
                writer.writerow({
                    "run_id": result.run_id, "scenario": scenario.name, "index": record.index,
                    "max_tokens": record.max_tokens, "seed": record.seed,
                    "scheduled_s": None if record.scheduled_at is None else round(record.scheduled_at - result.t0, 6),
                    "sent_s": round(record.sent_at - result.t0, 6), "ttft_ms": _r(m.ttft_ms),
                    "tpot_ms": _r(m.tpot_ms), "e2e_ms": _r(m.e2e_ms), "tokens": m.tokens,
                    "itl_mean_ms": _r(sum(m.itl_ms) / len(m.itl_ms)) if m.itl_ms else None,
                    "itl_max_ms": _r(max(m.itl_ms)) if m.itl_ms else None,
                    "stream_tokens_per_s": _r(m.stream_tokens_per_s),
                    "server_ttft_ms": server.ttft_ms if server else None,
                    "server_total_ms": server.total_ms if server else None,
                    "server_tokens_per_s": server.tokens_per_s if server else None,
                    "bytes": record.bytes_received, "finish_reason": record.finish_reason,
                    "status": record.status, "error": record.error,
                })


def summary_rows(result: BenchResult) -> list[dict[str, Any]]:
    rows = []
    for scenario in result.scenarios:
        s = scenario.summary
        base = {"run_id": result.run_id, "scenario": scenario.name}
        for label, path in (("ttft_ms", ("ttft_ms",)), ("itl_ms", ("itl_ms",)), ("tpot_ms", ("tpot_ms",)),
                            ("e2e_ms", ("e2e_ms",)), ("stream_tokens_per_s", ("stream_tokens_per_s",)),
                            ("server_ttft_ms", ("server", "ttft_ms")), ("server_total_ms", ("server", "total_ms")),
                            ("server_ttft_gap_ms", ("server", "ttft_gap_ms")),
                            ("overhead_itl_ms", ("pipeline_overhead", "itl_diff_ms")),
                            ("overhead_ttft_ms", ("pipeline_overhead", "ttft_diff_ms"))):
            dist = dig(s, *path)
            if dist:
                rows.append({**base, "metric": label, **{k: dist[k] for k in ("count", *COLUMNS)}})
        scalars = {
            "requests_completed": s["requests"]["completed"], "errors": s["requests"]["errors"],
            "requests_per_s": s["requests_per_s"], "output_tokens": s["output_tokens"],
            "output_tokens_per_s": s["output_tokens_per_s"], "duration_s": s["duration_s"],
            "goodput_fraction": dig(s, "goodput", "fraction"),
            "goodput_requests_per_s": dig(s, "goodput", "requests_per_s"),
            "pipeline_overhead_itl_ms": dig(s, "pipeline_overhead", "itl_ms"),
            "wire_bytes_per_token": dig(s, "wire", "bytes_per_token"),
            "energy_j": dig(scenario.energy, "energy_j"),
            "tokens_per_joule": dig(scenario.energy, "tokens_per_joule"),
        }
        rows.extend({**base, "metric": k, "value": v} for k, v in scalars.items())
    return rows


def write_summary_csv(result: BenchResult, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(summary_rows(result))


def save_result(result: BenchResult, directory: str | Path) -> dict[str, str]:
    """<run_id>.json, <run_id>.csv (per request) and <run_id>.summary.csv in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / f"{result.run_id}.json", "csv": directory / f"{result.run_id}.csv",
             "summary_csv": directory / f"{result.run_id}.summary.csv"}
    result.paths = {k: str(v) for k, v in paths.items()}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(result.to_json(), encoding="utf-8")
    tmp.replace(paths["json"])  # a half-written JSON never shows up in list_runs
    write_requests_csv(result, paths["csv"])
    write_summary_csv(result, paths["summary_csv"])
    return result.paths


def write_output(result: BenchResult, path: str | Path) -> Path:
    """-o FILE: CSV of the requests when FILE ends in .csv, else the JSON document."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        write_requests_csv(result, path)
    else:
        path.write_text(result.to_json(), encoding="utf-8")
    return path
