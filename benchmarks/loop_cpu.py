"""The event loop's CPU per streamed token: this checkout against a baseline commit (issue 18).

On a machine with as many cores as llama.cpp has threads, every millisecond the server's event
loop thread spends on a token (waking up, encoding the SSE frame, the socket write, its timers)
is taken from the decode running beside it. llama-server's HTTP thread spends a few
hundredths of a millisecond per token; abi's loop a few tenths. This benchmark measures that
cost directly, as the CPU time of the server's main thread (/proc) divided by the tokens
streamed, which is far steadier than the inter-token latency it shows up in.

Both servers (this checkout, and `--baseline REF` exported with `git archive`) serve the same
GGUF (SmolLM2 by default) with the same settings and are driven by the same client as
vs_llama_server.py, rounds interleaved and the order alternating. Printed: the median per round
of loop CPU per token, aggregate tok/s and ITL p50, and the ratios (this / baseline).

Usage: python benchmarks/loop_cpu.py [--baseline HEAD~1] [--models smollm2] [--concurrency 1,8]
           [--rounds 6] [--streams 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path

import psutil
from harness import REPO, abi_server, percentile
from vs_llama_server import MODELS, decode, eos_token_id


def export(ref: str, into: Path) -> Path:
    """The `abi_tui` package as it was at `ref`, under `into`."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "abi_tui"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def listener_pid(url: str) -> int:
    port = int(url.rsplit(":", 1)[1])
    return next(c.pid for c in psutil.net_connections("tcp")
                if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN)


def main_thread_cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")  # utime + stime


async def bench(name: str, concurrency: int, sources: dict[str, Path | None], args: argparse.Namespace) -> None:
    model = MODELS[name]()
    ban = eos_token_id(model)
    with ExitStack() as stack:
        urls = {label: stack.enter_context(abi_server(model, threads=args.threads, parallel=8, source=source))
                for label, source in sources.items()}
        pids = {label: listener_pid(url) for label, url in urls.items()}
        for url in urls.values():
            await decode(url, concurrency, args, ban)  # warm up
        rows = {label: {"cpu": [], "tok_s": [], "itl": []} for label in urls}
        labels = list(urls)
        for round_ in range(args.rounds):
            for label in labels if round_ % 2 == 0 else labels[::-1]:
                before, tokens, rates = main_thread_cpu_ms(pids[label]), 0, []
                for _ in range(args.streams):
                    stats = await decode(urls[label], concurrency, args, ban)
                    tokens += args.max_tokens * concurrency
                    rates.append(stats["aggregate_tok_s"])
                    rows[label]["itl"] += stats["itls"]
                rows[label]["cpu"].append((main_thread_cpu_ms(pids[label]) - before) / tokens)
                rows[label]["tok_s"].append(statistics.median(rates))
    print(f"\n{name}, c={concurrency}, {args.rounds} rounds of {args.streams} requests")
    print(f"{'':<10} {'loop CPU ms/token':>18} {'tok/s':>8} {'ITL p50 ms':>11}")
    figures = {}
    for label, row in rows.items():
        figures[label] = (statistics.median(row["cpu"]), statistics.median(row["tok_s"]), percentile(row["itl"], 50))
        print(f"{label:<10} {figures[label][0]:>18.3f} {figures[label][1]:>8.1f} {figures[label][2]:>11.2f}")
    new, old = figures["this"], figures["baseline"]
    print(f"{'ratio':<10} {new[0] / old[0]:>17.2f}× {new[1] / old[1]:>7.2f}× {new[2] / old[2]:>10.2f}×")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="HEAD~1", help="a git ref of this repository")
    parser.add_argument("--models", default="smollm2")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--streams", type=int, default=8, help="requests per round and server")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="abi-baseline-") as tmp:
        sources = {"this": None, "baseline": export(args.baseline, Path(tmp))}
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.baseline],
                                capture_output=True, text=True).stdout.strip()
        print(f"baseline: {args.baseline} ({commit})")
        for name in args.models.split(","):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                await bench(name, concurrency, sources, args)


if __name__ == "__main__":
    asyncio.run(main())
