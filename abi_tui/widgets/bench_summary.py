"""A finished benchmark run as the Bench pane shows it: per scenario the percentiles of TTFT,
ITL, TPOT and E2E with the server's timings beside the client's and the pipeline overhead, the
rates, goodput, encoding and energy figures, and every metric's definition.

Rich renderables from a `BenchResult` (abi_tui.bench.results), duck-typed so that this module
imports only the benchmark's light `figures` (its statistics pull in numpy and aiohttp). The console
report (`abi bench`) lays out the same figures for 80 columns of a terminal; this one fits the
pane's right-hand side and keeps each scenario's figures together.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from abi_tui.bench.figures import LATENCY_ROWS, dig, num

PERCENTILE_COLUMNS = ("min", "mean", "p50", "p90", "p95", "p99", "max")
# What the definitions are called in the tables above (DEFINITIONS keys are the JSON's).
DEFINITION_LABELS = {"ttft_ms": "TTFT", "itl_ms": "ITL", "tpot_ms": "TPOT", "e2e_ms": "E2E",
                     "stream_tokens_per_s": "stream tok/s", "output_tokens_per_s": "tok/s",
                     "requests_per_s": "req/s", "pipeline_overhead_ms": "overhead",
                     "server": "server, gap c-s", "tokens_per_joule": "tok/J"}


def loads(values: Any) -> str:
    """A load average triple (1, 5, 15 minutes) as `0.93 1.50 1.80`."""
    return " ".join(f"{v:.2f}" for v in values) if isinstance(values, list) else "?"


def latency_table(summary: dict[str, Any]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False)
    table.add_column("ms", style="bold", no_wrap=True)
    table.add_column("n", justify="right", style="dim")
    for column in PERCENTILE_COLUMNS:
        table.add_column(column, justify="right", no_wrap=True)
    for label, path in LATENCY_ROWS:
        dist = dig(summary, *path)
        if dist:
            table.add_row(label, num(dist["count"]), *(num(dist[c]) for c in PERCENTILE_COLUMNS))
    return table


def scenario_lines(scenario: Any) -> list[RenderableType]:
    s = scenario.summary
    requests = s.get("requests") or {}
    head = Text.assemble((scenario.name, "bold"), " — ", scenario.load.describe(),
                         (f" · {scenario.model}" if scenario.model != scenario.name else "", "dim"))
    rates = [f"{requests.get('completed', 0)} ok, {requests.get('errors', 0)} errors",
             f"{num(s.get('requests_per_s'), 1)} req/s", f"{num(s.get('output_tokens_per_s'), 0)} tok/s",
             f"stream p50 {num(dig(s, 'stream_tokens_per_s', 'p50'), 1)} tok/s"]
    goodput = s.get("goodput")
    if goodput:
        bounds = ", ".join(f"{k.removesuffix('_ms')}≤{v:g} ms" for k, v in (goodput.get("slo") or {}).items())
        fraction = goodput.get("fraction")
        rates.append(f"goodput {fraction:.0%} ({bounds})" if fraction is not None else f"goodput - ({bounds})")
    notes: list[str] = []
    if requests.get("errors"):
        notes.append(f"errors by kind: {requests.get('error_kinds')}")
    overhead = s.get("pipeline_overhead") or {}
    if overhead.get("available"):
        notes.append(f"pipeline overhead: ITL {overhead['itl_ms']:+.3f} ms per token against "
                     f"{overhead['configured_itl_ms']:.3f} ms configured")
    else:
        notes.append(f"pipeline overhead N/A: {overhead.get('reason')}")
    server = s.get("server") or {}
    if not server.get("available"):
        notes.append(f"server timings N/A: {server.get('reason')}")
    wire = dig(s, "wire", "bytes_per_token")
    if wire:
        notes.append(f"wire: {wire:.1f} bytes per token")
    energy = scenario.energy or {}
    if energy.get("available"):
        notes.append(f"energy: {num(energy.get('energy_j'), 1)} J, {num(energy.get('tokens_per_joule'), 3)} tok/J")
    lines: list[RenderableType] = [head, Text(" · ".join(rates)), latency_table(s)]
    lines.extend(Text(note, style="dim") for note in notes)
    return lines


def encoding_table(encoding: dict[str, Any]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False,
                  title=f"Encoding: the server's encoders in-process on {encoding.get('tokens')} tokens",
                  title_justify="left", title_style="bold")
    for name in ("format", "ns/token", "bytes/token", "ratio"):
        table.add_column(name, justify="left" if name == "format" else "right")
    for route, figures in (encoding.get("sse") or {}).items():
        table.add_row(f"SSE {route}", num(figures.get("ns_per_token"), 0), num(figures.get("bytes_per_token"), 1),
                      f"{figures.get('bytes_ratio', 0):.1f}x")
    ws = encoding.get("ws")
    if ws:
        table.add_row("WebSocket frame", num(ws.get("ns_per_message"), 0), num(ws.get("bytes_per_message"), 1),
                      f"{ws.get('bytes_ratio', 0):.1f}x")
    return table


def definitions_table(definitions: dict[str, str]) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(style="dim")
    for key, text in definitions.items():
        table.add_row(DEFINITION_LABELS.get(key, key.replace("_", " ")), text)
    return table


def summary_renderable(result: Any, address: str | None = None, path: str | None = None) -> RenderableType:
    """Everything about one run (`address`: how to print the target's URL; `path`: where it
    was saved, as the pane wants it shown)."""
    target = result.target or {}
    env = result.environment or {}
    kind = f"{'embedded ' if target.get('embedded') else ''}{target.get('server') or '?'} server"
    parts: list[RenderableType] = [
        Text.assemble((result.run_id, "bold"), ("  " + result.created, "dim")),
        Text(f"{address or target.get('url')} ({kind}) · {target.get('transport')} {target.get('endpoint')} · "
             f"{result.duration_s:.1f} s"),
        Text(f"machine: {env.get('cpu_count')} CPUs, load average {loads(env.get('load_avg_start'))} → "
             f"{loads(env.get('load_avg_end'))}, host CPU {num(env.get('host_cpu_percent_mean'), 0)} %", style="dim"),
        Text(""),
    ]
    for scenario in result.scenarios:
        parts.extend(scenario_lines(scenario))
        parts.append(Text(""))
    for sweep in result.sweep or []:
        parts.append(Text(f"sweep {sweep['scenario']}: best concurrency {sweep['best_concurrency']}; "
                          f"stopped: {sweep['stopped']}"))
    if result.encoding:
        parts.extend([encoding_table(result.encoding), Text("")])
    gpu = (result.telemetry or {}).get("gpu") or {}
    if gpu.get("available"):
        parts.append(Text(f"GPU ({gpu.get('source')}): {num(gpu.get('energy_j'), 1)} J, mean "
                          f"{num(gpu.get('mean_power_w'), 1)} W, {num(gpu.get('tokens_per_joule'), 3)} tokens/J"))
    else:
        parts.append(Text(f"GPU energy and tokens/J: N/A — {gpu.get('reason') or 'no telemetry'}", style="dim"))
    if path:
        parts.append(Text(f"saved: {path}", style="dim"))
    if result.definitions:
        parts.extend([Text(""), Text("Definitions", style="bold"), definitions_table(result.definitions)])
    return Group(*parts)
