"""A client that goes away mid-stream stops its generation within a token and frees its slot."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

JSON = {"Content-Type": "application/json"}


async def read_tokens(response: aiohttp.ClientResponse, count: int) -> int:
    seen = 0
    async for line in response.content:
        if line.startswith(b"data: {") and b'"text":"' in line and b'"text":""' not in line:
            seen += 1
            if seen == count:
                return seen
    return seen


async def test_disconnect_stops_local_generation_and_frees_the_slot(app_server, tiny_model):
    # One sequence and no queue: a leaked slot would turn the next request into a 429.
    server = await app_server(model=str(tiny_model), parallel=1, max_queue=0, threads=1)
    backend = server.state.engine.active_backend()
    step = backend._step

    def slow_step():  # 20 ms per token so "within one token" is observable
        time.sleep(0.02)
        step()

    backend._step = slow_step
    request = json.dumps({"prompt": "abc", "max_tokens": 400, "stream": True, "temperature": 0})
    async with aiohttp.ClientSession(server.url) as session:
        response = await session.post("/v1/completions", data=request, headers=JSON)
        assert await read_tokens(response, 5) == 5
        response.close()  # the client goes away
        generated_at_close = backend.tokens_generated
    deadline = time.monotonic() + 5
    while backend._active and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert not backend._active, "the generation kept running after the client left"
    assert backend.tokens_generated - generated_at_close <= 2  # stopped within a token of noticing
    assert server.state.engine.active_streams == 0
    backend._step = step
    async with aiohttp.ClientSession(server.url) as session:
        started = time.monotonic()
        async with session.post("/v1/completions", headers=JSON,
                                data=json.dumps({"prompt": "abc", "max_tokens": 3})) as again:
            assert again.status == 200
            assert (await again.json())["usage"]["completion_tokens"] == 3
        assert time.monotonic() - started < 5


async def test_disconnect_stops_mock_stream(app_server):
    server = await app_server(max_streams=1, max_queue=0)
    model = "mock/constant_rate?min_ms=20&max_ms=20"
    mock = server.state.engine._mock(model)
    async with aiohttp.ClientSession(server.url) as session:
        response = await session.post("/api/stream", headers=JSON,
                                      data=json.dumps({"model": model, "prompt": "one two three", "max_tokens": 500}))
        seen = 0
        async for line in response.content:
            if line.startswith(b"event: abi.token"):
                seen += 1
                if seen == 5:
                    break
        response.close()
    deadline = time.monotonic() + 3
    while server.state.engine.active_streams and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert server.state.engine.active_streams == 0
    assert mock is server.state.engine._mock(model)
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/v1/completions", headers=JSON,
                                data=json.dumps({"model": model, "prompt": "x", "max_tokens": 2})) as again:
            assert again.status == 200
