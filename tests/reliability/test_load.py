"""Load (issue 11): 200 concurrent streaming clients, SSE and WebSocket mixed, against the mock
backend of an `abi dash --serve` process: zero errors, no stream left open, the server's memory
back within 10% of its start; and the same with the queue overflowing, where every refusal is a
429 with Retry-After and every accepted stream completes.

The server runs with --max-streams 256 so that 200 clients stream at once rather than queue
(the default of 100 would make half of them wait, which the overflow test covers instead).
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import aiohttp
import psutil
import pytest

from .clients import Incomplete, Refused, Tally, abi_sse, openai_sse
from .conftest import knob

pytestmark = pytest.mark.reliability

CLIENTS = knob("load_clients", 200)
SECONDS = knob("load_seconds", 8.0)
OVERFLOW_SECONDS = knob("overflow_seconds", 5.0)
MAX_TOKENS = 24
MODEL = "mock/constant_rate?min_ms=20&max_ms=20"  # ~0.5 s per stream


async def ws_client(session: aiohttp.ClientSession, tally: Tally, deadline: float, model: str,
                    on_refused) -> None:
    """One WebSocket connection, one stream after another on it until the deadline."""
    async with session.ws_connect("/api/stream/ws", heartbeat=None) as ws:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            await ws.send_str(json.dumps({"type": "request", "request_id": f"r{n}", "model": model,
                                          "prompt": "one two three", "max_tokens": MAX_TOKENS}))
            tally.opened()
            tokens, refused = 0, None
            try:
                while True:
                    message = json.loads(await ws.receive_str(timeout=60))
                    if message["type"] == "token":
                        tokens += 1
                    elif message["type"] == "end":
                        if tokens != MAX_TOKENS or message["usage"]["completion_tokens"] != MAX_TOKENS:
                            raise Incomplete(f"WebSocket end after {tokens} tokens: {message}")
                        break
                    elif message["type"] == "error" and message.get("code") == "queue_full":
                        refused = Refused(429, {"error": message}, str(message.get("retry_after")))
                        break
                    elif message["type"] != "start":
                        raise Incomplete(f"WebSocket message {message}")
            finally:
                tally.closed()
            if refused is not None:
                await on_refused(refused)
            else:
                tally.streams += 1
                tally.tokens += tokens


async def http_client(session: aiohttp.ClientSession, tally: Tally, deadline: float, model: str, transport,
                      on_refused) -> None:
    while time.monotonic() < deadline:
        tally.opened()
        try:
            tokens = await transport(session, model, MAX_TOKENS)
        except Refused as refused:
            tally.closed()
            await on_refused(refused)
            continue
        tally.closed()
        tally.streams += 1
        tally.tokens += tokens


async def run_clients(url: str, clients: int, seconds: float, on_refused) -> tuple[Tally, int]:
    """`clients` concurrent clients (a third each ABI SSE, OpenAI SSE, WebSocket) for `seconds`;
    returns the tally and the most active streams /health reported meanwhile."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)  # the default caps a session at 100 connections
    timeout = aiohttp.ClientTimeout(total=120)
    peak_active = 0

    async def guarded(coro) -> None:
        try:
            await coro
        except Exception as exc:  # every failure is an error of the run, never a crash of the test
            tally.errors.append(f"{type(exc).__name__}: {exc}"[:300])

    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        async def watch() -> None:
            nonlocal peak_active
            async with aiohttp.ClientSession(url) as probe:
                while True:
                    async with probe.get("/health") as response:
                        peak_active = max(peak_active, (await response.json())["active_streams"])
                    await asyncio.sleep(0.25)

        watcher = asyncio.create_task(watch())
        tasks = []
        for i in range(clients):
            kind = i % 3
            if kind == 2:
                coro = ws_client(session, tally, deadline, MODEL, on_refused)
            else:
                coro = http_client(session, tally, deadline, MODEL, (abi_sse, openai_sse)[kind], on_refused)
            tasks.append(asyncio.create_task(guarded(coro)))
        await asyncio.gather(*tasks)
        watcher.cancel()
    return tally, peak_active


async def health(url: str) -> dict:
    async with aiohttp.ClientSession(url) as session, session.get("/health") as response:
        return await response.json()


async def settle(url: str, timeout: float = 15.0) -> dict:
    """Wait until the server reports no active or queued stream."""
    deadline = time.monotonic() + timeout
    state = await health(url)
    while (state["active_streams"] or state["queued"]) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        state = await health(url)
    return state


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


async def test_200_concurrent_streaming_clients(serve, figures):
    server = serve("--max-streams", "256", "--max-queue", "512")
    pid = server.process.pid

    async def no_refusal(refused: Refused) -> None:
        raise AssertionError(f"refused with room to spare: {refused}")

    # Warm up every path at full width (imports, buffers, the allocator's arenas: RSS levels off
    # after ~5 s of this and stays flat over later runs), then take the baseline to return to.
    warm, _ = await run_clients(server.url, CLIENTS, min(5.0, SECONDS / 2), no_refusal)
    assert not warm.errors, warm.errors[:3]
    await settle(server.url)
    await asyncio.sleep(1.0)
    before = rss(pid)
    peak_rss = before

    async def sample() -> None:
        nonlocal peak_rss
        while True:
            peak_rss = max(peak_rss, rss(pid))
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    started = time.monotonic()
    tally, peak_active = await run_clients(server.url, CLIENTS, SECONDS, no_refusal)
    elapsed = time.monotonic() - started
    sampler.cancel()
    state = await settle(server.url)
    deadline = time.monotonic() + 10
    after = rss(pid)
    while after > before * 1.10 and time.monotonic() < deadline:  # give the allocator a moment
        await asyncio.sleep(0.5)
        after = rss(pid)
    figures.set(clients=CLIENTS, seconds=round(elapsed, 1), clients_held=tally.held, server_peak_active=peak_active,
                streams=tally.streams, tokens=tally.tokens, errors=len(tally.errors),
                rss_before_mb=round(before / 2**20, 1), rss_peak_mb=round(peak_rss / 2**20, 1),
                rss_after_mb=round(after / 2**20, 1))
    assert not tally.errors, f"{len(tally.errors)} errors, first: {tally.errors[:3]}"
    assert tally.held == CLIENTS  # every client had a stream open at once at some point
    assert peak_active >= CLIENTS * 0.9
    assert tally.streams >= CLIENTS
    assert state["active_streams"] == 0 and state["queued"] == 0, state
    assert after <= before * 1.10, f"RSS {before / 2**20:.1f} MiB before, {after / 2**20:.1f} MiB after"
    assert server.process.poll() is None


async def test_queue_overflow_is_429_with_retry_after_and_nothing_else(serve, figures):
    server = serve("--max-streams", "16", "--max-queue", "16")
    refusals: list[Refused] = []

    async def back_off(refused: Refused) -> None:
        refusals.append(refused)
        await asyncio.sleep(random.uniform(0.05, 0.3))

    tally, peak_active = await run_clients(server.url, CLIENTS, OVERFLOW_SECONDS, back_off)
    state = await settle(server.url)
    wrong = [r for r in refusals if r.status != 429 or not r.retry_after or int(r.retry_after) < 1
             or r.body.get("error", {}).get("code") != "queue_full"]
    figures.set(clients=CLIENTS, max_streams=16, max_queue=16, streams=tally.streams, refusals=len(refusals),
                wrong_refusals=len(wrong), errors=len(tally.errors), server_peak_active=peak_active)
    assert not tally.errors, f"{len(tally.errors)} errors, first: {tally.errors[:3]}"
    assert refusals, "the queue never overflowed"
    assert not wrong, wrong[:3]
    assert tally.streams > 0 and peak_active <= 16
    assert state["active_streams"] == 0 and state["queued"] == 0, state
    # and the server is fine afterwards
    async with aiohttp.ClientSession(server.url) as session:
        assert await abi_sse(session, MODEL, 3) == 3
