"""Health details, the request log, and shutdown with event subscribers connected."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from abi_tui.server.main import graceful_stop


async def test_request_log_and_instance(app_server):
    server = await app_server()
    async with aiohttp.ClientSession(server.url) as session:
        async with session.get("/v1/models") as response:
            assert response.status == 200
        async with session.get("/api/requests") as response:
            entries = (await response.json())["requests"]
        assert any(e["path"] == "/v1/models" and e["status"] == 200 for e in entries)
        newest = entries[-1]["ts"]
        async with session.get(f"/api/requests?since={newest}") as response:
            assert (await response.json())["requests"] == []
        async with session.get("/api/requests?since=yesterday") as response:
            assert response.status == 400
        async with session.get("/health") as response:
            health = await response.json()
        assert health["instance"] == server.state.events.instance and health["context_per_request"] == 4096


async def test_shutdown_does_not_wait_for_event_subscribers(app_server):
    server = await app_server()
    session = aiohttp.ClientSession(server.url)
    events = await session.get("/api/events")
    hello = await events.content.readuntil(b"\n\n")
    assert b"instance" in hello
    started = time.monotonic()
    await asyncio.wait_for(graceful_stop(server), 20)
    assert time.monotonic() - started < 5  # not the 10 s grace meant for generations
    await session.close()
