"""AbiClient against a real in-process server: typed records, the server's error messages as
ClientError, auth, an unreachable server, events with replay, chat streams over WS and SSE."""

from __future__ import annotations

import asyncio

import pytest

from abi_tui.client import (
    CONNECTION_OPEN,
    AbiClient,
    Backoff,
    ClientError,
    ServerUnreachable,
)
from abi_tui.net.sse import SseDecoder, SseEvent

from .conftest import free_port


async def test_health_models_metrics(app_server, cached):
    server = await app_server(model=str(cached["tiny"]), threads=1, n_ctx=512)
    async with AbiClient(server.url) as client:
        health = await client.health()
        assert health.state == "ready" and health.model == "tiny" and health.auth == "none"
        models = {m.name: m for m in await client.models()}
        assert {"tiny", "tiny-b"} <= set(models)
        assert models["tiny"].loaded and not models["tiny-b"].loaded
        assert models["tiny"].quant and models["tiny"].size > 0 and models["tiny"].gguf
        info = await client.model_info("tiny-b")
        assert info.memory_estimate is not None and info.memory_estimate.total_bytes > 0
        # The estimate from the listing's summary matches the server's.
        assert models["tiny-b"].estimated_bytes(512) == info.memory_estimate.total_bytes
        samples = await client.metrics()
        assert "abi_requests_total" in samples
        assert (await client.telemetry()).get("latest") is not None


async def test_errors_carry_the_server_message(app_server):
    server = await app_server()
    async with AbiClient(server.url) as client:
        with pytest.raises(ClientError) as error:
            await client.reload("no-such-model")
        assert error.value.status == 404 and error.value.code == "model_not_found"
        assert "no-such-model" in error.value.message
        with pytest.raises(ClientError) as error:
            await client.delete_model("no-such-model")
        assert error.value.status == 404


async def test_token_auth(app_server):
    server = await app_server(token="s3cret")
    async with AbiClient(server.url) as anonymous:
        assert (await anonymous.health()).auth == "token"  # /health stays open
        with pytest.raises(ClientError) as error:
            await anonymous.models()
        assert error.value.status == 401 and "token" in error.value.message
        with pytest.raises(ClientError):
            async for _ in anonymous.events():
                pass
    async with AbiClient(server.url, "s3cret") as client:
        assert isinstance(await client.models(), list)


async def test_unreachable_server_is_one_clear_line():
    url = f"http://127.0.0.1:{free_port()}"
    async with AbiClient(url) as client:
        with pytest.raises(ServerUnreachable) as error:
            await client.health()
        assert error.value.message == f"cannot reach the server at {url}: connection refused"
        events = client.events(backoff=Backoff(initial=0.01, maximum=0.01))
        lost = await anext(events)
        assert lost.type == "connection.lost" and "connection refused" in lost.data["error"]
        await events.aclose()


async def test_events_replay_history_then_live(app_server, cached):
    server = await app_server(model=str(cached["tiny"]), threads=1, n_ctx=512)
    async with AbiClient(server.url) as client:
        seen = []

        async def follow() -> None:
            async for event in client.events():
                seen.append(event)
                if event.type == "reload.done":
                    return

        follower = asyncio.create_task(follow())
        while not any(e.type == CONNECTION_OPEN for e in seen):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        result = await client.reload(str(cached["tiny-b"]))
        assert result.model == "tiny-b" and result.previous_model == "tiny"
        await asyncio.wait_for(follower, 10)
        replayed = [e.type for e in seen if e.replayed]
        live = [e.type for e in seen if not e.replayed and e.type != "telemetry.sample"]
        assert "model.ready" in replayed
        assert live[:1] == ["connection.open"] and "reload.started" in live and live[-1] == "reload.done"


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_chat_stream(app_server, transport):
    server = await app_server()
    async with AbiClient(server.url) as client:
        body = {"prompt": "one two three", "model": "mock/constant_rate?min_ms=1&max_ms=1", "max_tokens": 5}
        async with client.stream(body, transport=transport) as stream:
            events = [event async for event in stream]
        kinds = [e.type for e in events]
        assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("token") == 5
        assert events[-1].data["usage"]["completion_tokens"] == 5
        slow = {**body, "model": "mock/constant_rate?min_ms=20&max_ms=20", "max_tokens": 500}
        async with client.stream(slow, transport=transport) as stream:
            tokens = 0
            last = None
            async for event in stream:
                last = event
                if event.type == "token":
                    tokens += 1
                    if tokens == 3:
                        await stream.cancel()
        assert tokens < 50 and last is not None and last.type in ("cancelled", "end")


def test_sse_decoder_handles_split_frames():
    decoder = SseDecoder()
    assert decoder.feed(b"event: a\nda") == []
    assert decoder.feed(b"ta: {\"x\": 1}\n\n: heartbeat\n\ndata: 2\n") == [SseEvent('{"x": 1}', "a")]
    assert decoder.feed(b"\n") == [SseEvent("2")]
