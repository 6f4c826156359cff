"""Timeouts, the circuit breaker and cancellation of remote backends, through the
server, against fake providers that stall or stream slowly. Timeouts are shortened through
`[endpoints.NAME]` keys; the defaults are checked in test_remote_units."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from fakes.providers import Script

from abi_tui.server.sse import parse_sse

from .conftest import MODELS

JSON = {"Content-Type": "application/json"}
SLOW = Script(tokens=[f" t{i}" for i in range(400)], token_delay_s=0.05)


async def chat(session: aiohttp.ClientSession, model: str) -> tuple[int, dict, dict]:
    async with session.post("/v1/chat/completions", headers=JSON, data=json.dumps(
            {"model": model, "messages": [{"role": "user", "content": "x"}]})) as response:
        return response.status, dict(response.headers), await response.json()


@pytest.mark.parametrize("provider", ["openai", "ollama", "anthropic"])
async def test_stall_times_out_then_the_breaker_opens_and_closes(remote, provider):
    fake = remote.fakes[provider]
    fake.script = Script(stall_s=30)
    remote.configure(provider, first_token_timeout_s=0.3, breaker_failures=5, breaker_open_s=1.5)
    server = await remote.start()
    model = MODELS[provider]
    async with aiohttp.ClientSession(server.url) as session:
        for _ in range(5):
            started = time.monotonic()
            status, _, body = await chat(session, model)
            assert status == 504 and body["error"]["code"] == "upstream_timeout", body
            assert "no first token within 0.3 s" in body["error"]["message"]
            assert time.monotonic() - started < 5
        # A first-token timeout is not retried: the provider took the request and went silent.
        assert fake.generations == 5
        # Each timed-out attempt closed its connection: the provider saw us leave.
        deadline = time.monotonic() + 5
        while fake.disconnects < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert fake.disconnects == 5

        status, headers, body = await chat(session, model)
        opened_at = time.monotonic()
        assert status == 503 and body["error"]["code"] == "circuit_open"
        assert 1 <= int(headers["Retry-After"]) <= 2 and "5 failures in a row" in body["error"]["message"]
        assert fake.generations == 5  # refused without asking the provider

        fake.script = Script()  # the provider recovers
        await asyncio.sleep(max(0.0, 1.6 - (time.monotonic() - opened_at)))
        status, _, body = await chat(session, model)  # the half-open probe
        assert status == 200 and body["choices"][0]["message"]["content"] == "Hello, remote world!"
        status, _, _ = await chat(session, model)
        assert status == 200 and fake.generations == 7
    assert server.state.services["remote"].endpoints[provider].breaker.state == "closed"


async def test_failed_probe_opens_the_breaker_again(remote):
    fake = remote.fakes["local"]
    fake.script = Script(error_status=500, error_message="boom")
    remote.configure("local", breaker_failures=2, breaker_open_s=0.5, retries=0)
    server = await remote.start()
    async with aiohttp.ClientSession(server.url) as session:
        assert [(await chat(session, MODELS["local"]))[0] for _ in range(3)] == [502, 502, 503]
        await asyncio.sleep(0.6)
        status, _, body = await chat(session, MODELS["local"])  # the probe fails...
        assert status == 502 and "boom" in body["error"]["message"]
        status, _, body = await chat(session, MODELS["local"])  # ...and the breaker is open again
        assert status == 503 and "boom" in body["error"]["message"]
    assert fake.generations == 3


async def test_client_errors_do_not_trip_the_breaker(remote):
    remote.fakes["local"].script = Script(error_status=400, error_message="bad")
    remote.configure("local", breaker_failures=2)
    server = await remote.start()
    async with aiohttp.ClientSession(server.url) as session:
        assert [(await chat(session, MODELS["local"]))[0] for _ in range(4)] == [400] * 4


async def test_silence_between_tokens_ends_the_stream(remote):
    remote.fakes["ollama"].script = Script(tokens=["a", "b", "c"], token_delay_s=20)
    remote.configure("ollama", between_tokens_timeout_s=0.3)
    server = await remote.start()
    async with aiohttp.ClientSession(server.url) as session:
        started = time.monotonic()
        async with session.post("/api/stream", headers=JSON, data=json.dumps(
                {"model": MODELS["ollama"], "prompt": "x"})) as response:
            events = [e for e in parse_sse(await response.text()) if "comment" not in e]
        assert time.monotonic() - started < 10
    assert [e["event"] for e in events] == ["abi.start", "abi.token", "abi.error"]
    error = json.loads(events[-1]["data"])
    assert error["code"] == "upstream_timeout" and "no token for 0.3 s" in error["message"]
    assert await remote.fakes["ollama"].wait_disconnect(5) is not None


@pytest.mark.parametrize("provider", list(MODELS))
async def test_client_disconnect_closes_the_upstream_stream(remote, provider):
    fake = remote.fakes[provider]
    fake.script = SLOW
    server = await remote.start()
    async with aiohttp.ClientSession(server.url) as session:
        response = await session.post("/v1/chat/completions", headers=JSON, data=json.dumps(
            {"model": MODELS[provider], "messages": [{"role": "user", "content": "x"}], "stream": True}))
        seen = 0
        async for line in response.content:
            if b'"content":" t' in line:
                seen += 1
                if seen == 3:
                    break
        response.close()  # our client goes away mid-answer
        waited = await fake.wait_disconnect(5)
    assert waited is not None, "the provider never saw the stream end"
    assert fake.completed == 0 and fake.disconnects == 1
    deadline = time.monotonic() + 5
    while server.state.engine.active_streams and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert server.state.engine.active_streams == 0


async def test_disconnect_while_waiting_for_the_first_token(remote):
    fake = remote.fakes["anthropic"]
    fake.script = Script(stall_s=30)
    server = await remote.start()
    async with aiohttp.ClientSession(server.url) as session:
        response = await session.post("/api/stream", headers=JSON, data=json.dumps(
            {"model": MODELS["anthropic"], "prompt": "x"}))
        async for line in response.content:
            if line.startswith(b"event: abi.start"):
                break
        await asyncio.sleep(0.2)  # the request is upstream, waiting for a token
        assert fake.generations == 1
        response.close()
        assert await fake.wait_disconnect(5) is not None
    breaker = server.state.services["remote"].endpoints["anthropic"].breaker
    assert breaker.failures == 0  # our client leaving says nothing about the provider


async def test_websocket_cancel_reaches_the_provider(remote):
    fake = remote.fakes["local"]
    fake.script = SLOW
    server = await remote.start()
    async with aiohttp.ClientSession(server.url) as session:
        async with session.ws_connect("/api/stream/ws") as ws:
            await ws.send_json({"type": "request", "request_id": "r1", "model": MODELS["local"], "prompt": "x"})
            tokens = 0
            while tokens < 3:
                message = await ws.receive_json(timeout=10)
                tokens += message["type"] == "token"
            await ws.send_json({"type": "cancel", "request_id": "r1"})
            while (message := await ws.receive_json(timeout=10))["type"] == "token":
                pass
            assert message["type"] == "cancelled"
            assert await fake.wait_disconnect(5) is not None
            # The connection stays usable for the next request.
            fake.script = Script()
            await ws.send_json({"type": "request", "request_id": "r2", "model": MODELS["local"], "prompt": "x"})
            while (message := await ws.receive_json(timeout=10))["type"] not in ("end", "error"):
                pass
            assert message["type"] == "end"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_keepalives_do_not_stand_in_for_tokens(remote, provider):
    remote.fakes[provider].script = Script(stall_s=30, keepalive_s=0.05)  # SSE comments, Anthropic pings
    remote.configure(provider, first_token_timeout_s=0.5)
    server = await remote.start()
    async with aiohttp.ClientSession(server.url) as session:
        started = time.monotonic()
        status, _, body = await chat(session, MODELS[provider])
        assert time.monotonic() - started < 5
    assert status == 504 and "no first token within 0.5 s" in body["error"]["message"]


@pytest.mark.parametrize("provider", ["openai", "ollama", "anthropic"])
async def test_reasoning_counts_as_progress_but_not_as_answer(remote, provider):
    # 0.8 s of reasoning before the first answer token, with a first-token timeout of 0.5 s.
    remote.fakes[provider].script = Script(thinking=["hmm"] * 8, token_delay_s=0.1)
    remote.configure(provider, first_token_timeout_s=0.5, between_tokens_timeout_s=5)
    server = await remote.start()
    async with aiohttp.ClientSession(server.url) as session:
        status, _, body = await chat(session, MODELS[provider])
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "Hello, remote world!"
