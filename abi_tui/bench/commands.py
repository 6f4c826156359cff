"""`abi bench streaming`: the streaming benchmark on the command line."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from typing import Any

from abi_tui.bench.presets import PATTERN_ALIASES, PRESETS

EPILOG = """\
Without --url an abi server is started for the run (`abi dash --serve` on a free loopback port)
and stopped after it. Without --preset one scenario runs: --model (default mock/constant_rate),
50 requests of 64 tokens at concurrency 1 after 2 warm-up requests. Results are printed with the
metric definitions and saved as JSON and CSV in $ABI_HOME/bench/ (fields: docs/BENCH.md).

examples:
  abi bench streaming --preset quick
  abi bench streaming --model 'mock/constant_rate?min_ms=10&max_ms=10' --concurrency 8 --requests 200
  abi bench streaming --url http://127.0.0.1:8080 --model gemma --poisson 2 --duration 60 --route completions
  abi bench streaming --preset standard --sweep --slo ttft=200ms,itl=50ms --json -o run.json
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _slo(text: str) -> dict[str, float]:
    from abi_tui.bench.stats import parse_slo

    try:
        return parse_slo(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("bench", help="streaming benchmark",
                                 description="Benchmarks of a server's streaming.")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", parser_class=type(parser))
    streaming = kinds.add_parser(
        "streaming", help="streaming latency and throughput (TTFT, ITL, TPOT, E2E, goodput, ...)",
        description="Measure a server's streaming: TTFT, ITL, TPOT and E2E percentiles, throughput, "
                    "goodput, pipeline overhead, encoding cost, server timings and GPU energy.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    streaming.add_argument("--url", help="server to measure (default: start an abi server for the run)")
    streaming.add_argument("--model", metavar="ID",
                           help="model id: mock/<pattern>[?min_ms=&max_ms=&seed=], a local model, a remote id")
    streaming.add_argument("--preset", choices=tuple(PRESETS), help="token counts, runs, patterns and delays (docs/BENCH.md)")
    streaming.add_argument("--pattern", metavar="P", help=f"mock pattern: {', '.join(PATTERN_ALIASES)}")
    load = streaming.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=_positive_int, metavar="N", help="closed loop: N requests in flight")
    load.add_argument("--rate", type=_positive_float, metavar="R", help="open loop: R requests/s, evenly spaced")
    load.add_argument("--poisson", type=_positive_float, metavar="R", help="open loop: R requests/s, Poisson arrivals")
    load.add_argument("--sweep", action="store_true",
                      help="closed loop at concurrency 1, 2, 4, ... until throughput stops rising or errors appear")
    streaming.add_argument("--requests", type=_positive_int, metavar="N", help="measured requests per scenario (warm-up excluded)")
    streaming.add_argument("--duration", type=_positive_float, metavar="S", help="seconds of measured load per scenario")
    streaming.add_argument("--max-tokens", type=_positive_int, metavar="N", help="tokens per request (overrides the preset's)")
    streaming.add_argument("--transport", choices=("sse", "ws"), default="sse", help="SSE (default) or WebSocket")
    streaming.add_argument("--route", choices=("chat", "completions", "abi"),
                           help="SSE route: /v1/chat/completions, /v1/completions or /api/stream "
                                "(default: abi on an abi server, chat elsewhere)")
    streaming.add_argument("--slo", type=_slo, metavar="SLO", help="goodput bounds, e.g. ttft=200ms,itl=50ms (also tpot, e2e)")
    streaming.add_argument("--token", help="bearer token (default: ABI_API_TOKEN / config)")
    streaming.add_argument("--json", action="store_true", help="print the JSON result on stdout instead of tables")
    streaming.add_argument("-o", "--output", metavar="FILE", help="also write the result to FILE (.csv: per-request CSV, else JSON)")
    parser.set_defaults(run=run, bench_parser=parser)


def config_from_args(args: argparse.Namespace, settings: Any) -> Any:
    from abi_tui.bench.loadgen import LoadSpec
    from abi_tui.bench.runner import BenchConfig

    load = None
    if args.concurrency:
        load = LoadSpec("concurrency", args.concurrency)
    elif args.rate:
        load = LoadSpec("rate", args.rate)
    elif args.poisson:
        load = LoadSpec("poisson", args.poisson)
    elif args.sweep:
        load = LoadSpec("sweep", 1)
    return BenchConfig(url=args.url, model=args.model, preset=args.preset, pattern=args.pattern, load=load,
                       requests=args.requests, duration_s=args.duration, max_tokens=args.max_tokens,
                       transport=args.transport, route=args.route, slo=args.slo or {},
                       token=args.token or settings.server.token)


class _Progress:
    """One line per phase on stderr, rewritten in place on a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = ""

    def __call__(self, sample: Any) -> None:
        label = f"{sample.scenario} {sample.phase}" + (f" c={sample.level}" if sample.level else "")
        if sample.event == "phase":
            if self.tty and self.last:
                sys.stderr.write("\n")
            self.last = label
            sys.stderr.write(f"{label}: {sample.planned or '...'} requests" + ("" if self.tty else "\n"))
        elif self.tty:
            planned = f"/{sample.planned}" if sample.planned else ""
            rate = f", {sample.tokens_per_s:.0f} tok/s" if sample.tokens_per_s else ""
            errors = f", {sample.errors} errors" if sample.errors else ""
            sys.stderr.write(f"\r{label}: {sample.done}{planned}{rate}{errors}   ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty and self.last:
            sys.stderr.write("\n")


def run(args: argparse.Namespace, settings: Any) -> int:
    if getattr(args, "kind", None) != "streaming":
        args.bench_parser.print_help()
        return 0 if args.kind is None else 2
    from rich.console import Console

    from abi_tui.bench.report import render, save_result, write_output
    from abi_tui.bench.runner import plan_scenarios, run_benchmark

    config = config_from_args(args, settings)
    try:
        plan_scenarios(config)  # bad combinations fail before a server starts
    except ValueError as exc:
        print(f"abi bench: {exc}", file=sys.stderr)
        return 2
    progress = _Progress()
    try:
        result = asyncio.run(run_benchmark(config, progress))
    except ValueError as exc:
        print(f"abi bench: {exc}", file=sys.stderr)
        return 2
    finally:
        progress.close()
    save_result(result, settings.bench_dir)
    if args.output:
        result.paths["output"] = str(write_output(result, args.output))
    if args.json:
        sys.stdout.write(result.to_json() + "\n")
        print("saved: " + ", ".join(result.paths.values()), file=sys.stderr)
    else:
        render(result, Console())
    failed = [s.name for s in result.scenarios if s.summary["requests"]["completed"] == 0]
    if failed:
        print(f"abi bench: no request succeeded in {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
