"""The ABI streaming protocols: SSE on /api/stream and WebSocket."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
import websockets

from abi_tui.server.sse import parse_sse

JSON = {"Content-Type": "application/json"}
SLOW = "mock/constant_rate?min_ms=30&max_ms=30"


async def test_sse_events_and_ids(app_server, tiny_model):
    server = await app_server(model=str(tiny_model), threads=1)
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/api/stream", headers=JSON, data=json.dumps(
                {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0})) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            events = [e for e in parse_sse(await response.text()) if "comment" not in e]
    assert [e["event"] for e in events] == ["abi.start"] + ["abi.token"] * 6 + ["abi.end"]
    assert [int(e["id"]) for e in events] == list(range(8))
    start = json.loads(events[0]["data"])
    assert start["model"] == "tiny" and start["request_id"] and "routing" in start
    tokens = [json.loads(e["data"]) for e in events[1:-1]]
    assert [t["index"] for t in tokens] == list(range(6))
    end = json.loads(events[-1]["data"])
    assert end["finish_reason"] == "length"
    assert end["usage"] == {"prompt_tokens": end["usage"]["prompt_tokens"], "completion_tokens": 6}
    assert set(end["timings"]) == {"ttft_ms", "total_ms", "tokens_per_s"} and end["timings"]["ttft_ms"] > 0


async def test_sse_bad_request_is_a_json_error_before_the_stream(app_server):
    server = await app_server()
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/api/stream", headers=JSON, data=b'{"max_tokens": 3}') as response:
            assert response.status == 400
            assert (await response.json())["error"]["param"] == "prompt"


async def test_heartbeat_while_queued_behind_another_stream(app_server):
    server = await app_server(max_streams=1, heartbeat_ms=200)
    async with aiohttp.ClientSession(server.url) as session:
        first = await session.post("/api/stream", headers=JSON, data=json.dumps(
            {"model": SLOW, "prompt": "a", "max_tokens": 40}))  # 1.2 s of tokens
        await asyncio.sleep(0.05)
        second = await session.post("/api/stream", headers=JSON, data=json.dumps(
            {"model": SLOW, "prompt": "b", "max_tokens": 2}))
        started = time.monotonic()
        text = (await second.text())
        waited = time.monotonic() - started
        await first.text()
    events = parse_sse(text)
    heartbeats = [e for e in events if e.get("comment") == "heartbeat"]
    first_token = next(i for i, e in enumerate(events) if e.get("event") == "abi.token")
    assert waited > 0.8
    assert len(heartbeats) >= 3  # sent on the timer while the request waited in the queue
    assert any(events.index(h) < first_token for h in heartbeats)


async def test_heartbeat_on_openai_stream_and_events(app_server):
    server = await app_server(heartbeat_ms=100)
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/v1/chat/completions", headers=JSON, data=json.dumps({
                "model": "mock/constant_rate?min_ms=300&max_ms=300", "max_tokens": 2,
                "messages": [{"role": "user", "content": "x"}], "stream": True})) as response:
            assert b": heartbeat" in await response.read()
        async with session.get("/api/events") as response:
            seen = b""
            deadline = time.monotonic() + 3
            while b": heartbeat" not in seen and time.monotonic() < deadline:
                seen += await response.content.readany()
            assert b": heartbeat" in seen


def ws_url(server, **query: str) -> str:
    base = server.url.replace("http://", "ws://") + "/api/stream/ws"
    return base + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


async def test_ws_two_interleaved_requests_on_one_connection(app_server):
    server = await app_server()
    async with websockets.connect(ws_url(server)) as ws:
        for rid in ("a", "b"):
            await ws.send(json.dumps({"type": "request", "request_id": rid, "model": SLOW, "prompt": rid,
                                      "max_tokens": 8}))
        order, ends = [], {}
        while len(ends) < 2:
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            order.append((message["type"], message["request_id"]))
            if message["type"] == "end":
                ends[message["request_id"]] = message
    tokens = [rid for kind, rid in order if kind == "token"]
    assert tokens.count("a") == 8 and tokens.count("b") == 8
    first_b = tokens.index("b")
    assert "a" in tokens[first_b:]  # interleaved, not one after the other
    assert ends["a"]["usage"]["completion_tokens"] == 8 and ends["a"]["finish_reason"] == "length"


async def test_ws_cancel_after_fifth_token_stops_before_seventh(app_server):
    server = await app_server()
    async with websockets.connect(ws_url(server)) as ws:
        await ws.send(json.dumps({"type": "request", "request_id": "r1", "model": SLOW, "prompt": "x y",
                                  "max_tokens": 200}))
        indexes = []
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if message["type"] == "token":
                indexes.append(message["index"])
                if message["index"] == 4:  # the 5th token
                    await ws.send(json.dumps({"type": "cancel", "request_id": "r1"}))
            if message["type"] in ("cancelled", "end", "error"):
                break
    assert message["type"] == "cancelled"
    assert max(indexes) < 6  # no 7th token (index 6)


async def test_ws_bad_input(app_server):
    server = await app_server()
    async with websockets.connect(ws_url(server)) as ws:
        await ws.send("{not json")
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["code"] == "invalid_json"
        await ws.send(json.dumps({"type": "request", "model": "mock/constant_rate", "prompt": "still usable",
                                  "max_tokens": 2}))
        kinds = []
        while "end" not in kinds:
            kinds.append(json.loads(await ws.recv())["type"])
        assert kinds == ["start", "token", "token", "end"]
        await ws.send(json.dumps({"type": "request", "max_tokens": "many"}))
        assert json.loads(await ws.recv())["type"] == "error"
    async with websockets.connect(ws_url(server)) as ws:
        await ws.send(b"\x00\x01binary")
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["code"] == "unsupported_data"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 1003
    async with websockets.connect(ws_url(server), max_size=None) as ws:
        await ws.send("x" * (1024 * 1024 + 1))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 1009


async def test_ws_at_most_four_at_once(app_server):
    server = await app_server()
    async with websockets.connect(ws_url(server)) as ws:
        for i in range(5):
            await ws.send(json.dumps({"type": "request", "request_id": f"r{i}", "model": SLOW, "prompt": "x",
                                      "max_tokens": 5}))
        seen = []
        while len([m for m in seen if m["type"] in ("end", "error")]) < 5:
            seen.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
    errors = [m for m in seen if m["type"] == "error"]
    assert [e["request_id"] for e in errors] == ["r4"] and errors[0]["code"] == "too_many_requests"


async def test_ws_auth_header_query_and_subprotocol(app_server):
    server = await app_server(token="tok")
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(ws_url(server)):
            pass
    assert refused.value.response.status_code == 401
    for connect in (
        lambda: websockets.connect(ws_url(server), additional_headers={"Authorization": "Bearer tok"}),
        lambda: websockets.connect(ws_url(server, token="tok")),
        lambda: websockets.connect(ws_url(server), subprotocols=["bearer.tok"]),
    ):
        async with connect() as ws:
            await ws.send(json.dumps({"type": "request", "model": "mock/constant_rate", "prompt": "a", "max_tokens": 1}))
            assert json.loads(await ws.recv())["type"] == "start"
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(ws_url(server, token="wrong")):
            pass
