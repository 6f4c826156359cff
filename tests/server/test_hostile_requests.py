"""Malformed and hostile requests: each gets its status and an OpenAI error object, and the
server keeps serving (limits and bad input)."""

from __future__ import annotations

import json

import aiohttp
import pytest

TOKEN = "s3cret-token"
JSON = {"Content-Type": "application/json"}
AUTH = {"Authorization": f"Bearer {TOKEN}", **JSON}
CHAT = "/v1/chat/completions"
OK_MESSAGES = [{"role": "user", "content": "hi"}]


def body(**fields) -> bytes:
    return json.dumps({"messages": OK_MESSAGES, "max_tokens": 4, **fields}).encode()


# (name, method, path, headers, raw body, expected status, expected code or None, expected param or None)
CASES = [
    ("not json", "POST", CHAT, AUTH, b"{not json", 400, "invalid_request", None),
    ("json array", "POST", CHAT, AUTH, b"[1,2]", 400, "invalid_request", None),
    ("empty body", "POST", CHAT, AUTH, b"", 400, "invalid_request", None),
    ("missing messages", "POST", CHAT, AUTH, json.dumps({"model": "tiny"}).encode(), 400, "invalid_request", "messages"),
    ("messages not a list", "POST", CHAT, AUTH, json.dumps({"messages": "hi"}).encode(), 400, "invalid_request", "messages"),
    ("empty messages", "POST", CHAT, AUTH, json.dumps({"messages": []}).encode(), 400, "invalid_request", "messages"),
    ("bad role", "POST", CHAT, AUTH, json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(),
     400, "invalid_request", "messages[0].role"),
    ("content a number", "POST", CHAT, AUTH, json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(),
     400, "invalid_request", "messages[0].content"),
    ("tool message without its call id", "POST", CHAT, AUTH,
     json.dumps({"messages": [{"role": "tool", "content": "x"}]}).encode(), 400, "invalid_request",
     "messages[0].tool_call_id"),
    ("function role", "POST", CHAT, AUTH, json.dumps({"messages": [{"role": "function", "content": "x"}]}).encode(),
     400, "invalid_request", "messages[0].role"),
    ("max_tokens string", "POST", CHAT, AUTH, body(max_tokens="ten"), 400, "invalid_request", "max_tokens"),
    ("negative max_tokens", "POST", CHAT, AUTH, body(max_tokens=-5), 400, "invalid_request", "max_tokens"),
    ("zero max_tokens", "POST", CHAT, AUTH, body(max_tokens=0), 400, "invalid_request", "max_tokens"),
    ("bad max_tokens beside max_completion_tokens", "POST", CHAT, AUTH, body(max_completion_tokens=2,
                                                                          max_tokens="x"), 400, "invalid_request",
     "max_tokens"),
    ("temperature too high", "POST", CHAT, AUTH, body(temperature=9), 400, "invalid_request", "temperature"),
    ("temperature bool", "POST", CHAT, AUTH, body(temperature=True), 400, "invalid_request", "temperature"),
    ("top_p negative", "POST", CHAT, AUTH, body(top_p=-0.1), 400, "invalid_request", "top_p"),
    ("stop wrong type", "POST", CHAT, AUTH, body(stop=[1, 2]), 400, "invalid_request", "stop"),
    ("logit_bias bad key", "POST", CHAT, AUTH, body(logit_bias={"abc": 1}), 400, "invalid_request", "logit_bias"),
    ("logit_bias out of vocab", "POST", CHAT, AUTH, body(model="tiny", logit_bias={"999999": 5}), 400,
     "invalid_request", "logit_bias"),
    ("n=9", "POST", CHAT, AUTH, body(n=9), 400, "invalid_request", "n"),
    ("tool without its function", "POST", CHAT, AUTH, body(tools=[{"type": "function"}]), 400, "invalid_request",
     "tools[0].function"),
    ("top_logprobs over 20", "POST", CHAT, AUTH, body(logprobs=True, top_logprobs=21), 400, "invalid_request",
     "top_logprobs"),
    ("bad response_format", "POST", CHAT, AUTH, body(response_format={"type": "yaml"}), 400, "invalid_request",
     "response_format"),
    ("stream not bool", "POST", CHAT, AUTH, body(stream="yes"), 400, "invalid_request", "stream"),
    ("unknown model", "POST", CHAT, AUTH, body(model="no-such-model"), 404, "model_not_found", "model"),
    ("unknown mock pattern", "POST", CHAT, AUTH, body(model="mock/sideways"), 404, "model_not_found", "model"),
    ("context overflow", "POST", CHAT, AUTH, body(model="tiny", max_tokens=100_000), 400, "context_length_exceeded",
     "messages"),
    ("prompt too long", "POST", "/v1/completions", AUTH,
     json.dumps({"model": "tiny", "prompt": "x" * 600, "max_tokens": 1}).encode(), 400, "context_length_exceeded",
     "prompt"),
    ("completions prompt list of ints", "POST", "/v1/completions", AUTH, json.dumps({"prompt": [1, 2]}).encode(), 400,
     "invalid_request", "prompt"),
    ("huge body", "POST", CHAT, AUTH, b'{"messages":[{"role":"user","content":"' + b"a" * (1024 * 1024 + 10) + b'"}]}',
     413, "payload_too_large", None),
    ("form content type", "POST", CHAT, {"Authorization": f"Bearer {TOKEN}",
                                          "Content-Type": "application/x-www-form-urlencoded"}, body(), 415,
     "unsupported_media_type", None),
    ("missing auth", "POST", CHAT, JSON, body(), 401, "invalid_api_key", None),
    ("wrong token", "POST", CHAT, {"Authorization": "Bearer nope", **JSON}, body(), 401, "invalid_api_key", None),
    ("lowercase scheme", "POST", CHAT, {"Authorization": f"bearer {TOKEN}", **JSON}, body(), 401, "invalid_api_key", None),
    ("token with padding", "POST", CHAT, {"Authorization": f"Bearer  {TOKEN} ", **JSON}, body(), 401,
     "invalid_api_key", None),
    ("token as query on http route", "POST", f"{CHAT}?token={TOKEN}", JSON, body(), 401, "invalid_api_key", None),
    ("unknown route", "GET", "/v1/nothing", AUTH, None, 404, "not_found", None),
    ("wrong method", "GET", CHAT, AUTH, None, 405, "method_not_allowed", None),
    ("embeddings input a number", "POST", "/v1/embeddings", AUTH, json.dumps({"input": 3}).encode(), 400,
     "invalid_request", "input"),
    ("reload without model", "POST", "/admin/reload", AUTH, b"{}", 400, "invalid_request", "model"),
    # 100 KB of nesting: refused before the parser recurses (it would raise RecursionError).
    ("deep nesting at the top", "POST", CHAT, AUTH, b"[" * 100_000 + b"]" * 100_000, 400, "json_too_deep", None),
    ("deep nesting unclosed", "POST", CHAT, AUTH, b"[" * 100_000, 400, "json_too_deep", None),
    ("deep objects", "POST", CHAT, AUTH, b'{"a":' * 20_000 + b"1" + b"}" * 20_000, 400, "json_too_deep", None),
    ("deep nesting in messages", "POST", CHAT, AUTH, b'{"messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400,
     "json_too_deep", None),
    ("deep nesting in content", "POST", CHAT, AUTH, b'{"messages":[{"role":"user","content":' + b"[" * 50_000
     + b"]" * 50_000 + b"}]}", 400, "json_too_deep", None),
    ("deep nesting on another route", "POST", "/admin/reload", AUTH, b"[" * 100_000, 400, "json_too_deep", None),
    ("brackets inside a string are text", "POST", CHAT, AUTH, body(model="tiny", messages=[
        {"role": "user", "content": "[{" * 3000}]), 400, "context_length_exceeded", "messages"),
    ("utf-16 body", "POST", CHAT, AUTH, body().decode().encode("utf-16"), 400, "invalid_request", None),
    ("utf-8 encoded surrogate", "POST", CHAT, AUTH, body(messages=[{"role": "user", "content": "a"}]).replace(
        b'"a"', b'"\xed\xa0\x80"'), 400, "invalid_request", None),
    ("text/plain", "POST", CHAT, {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"}, body(), 415,
     "unsupported_media_type", None),
    ("multipart", "POST", CHAT, {"Authorization": f"Bearer {TOKEN}", "Content-Type": "multipart/form-data; boundary=x"},
     body(), 415, "unsupported_media_type", None),
    ("json with another charset", "POST", CHAT, {"Authorization": f"Bearer {TOKEN}",
                                                 "Content-Type": "application/json; charset=latin-1"}, body(), 415,
     "unsupported_media_type", None),
    ("foreign origin", "POST", CHAT, {**AUTH, "Origin": "http://evil.example"}, body(), 403, "origin_not_allowed", None),
]


@pytest.fixture
async def server(app_server, tiny_model):
    return await app_server(model=str(tiny_model), token=TOKEN, n_ctx=512, threads=1)


async def test_hostile_requests_get_openai_errors_and_server_keeps_serving(server):
    assert len(CASES) >= 25
    async with aiohttp.ClientSession(server.url) as session:
        for name, method, path, headers, raw, status, code, param in CASES:
            async with session.request(method, path, headers=headers, data=raw) as response:
                payload = await response.json(content_type=None)
                assert response.status == status, f"{name}: {response.status} {payload}"
                error = payload["error"]
                assert set(error) == {"message", "type", "param", "code"}, name
                assert error["message"] and isinstance(error["message"], str), name
                if code is not None:
                    assert error["code"] == code, f"{name}: {error}"
                if param is not None:
                    assert error["param"] == param, f"{name}: {error}"
            # After every hostile request the server still answers a good one.
            async with session.post(CHAT, headers=AUTH, data=body(model="tiny", temperature=0)) as response:
                assert response.status == 200, name
                assert (await response.json())["choices"][0]["message"]["content"]


def nested(depth: int) -> bytes:
    """A chat body whose deepest value sits `depth` levels down (the body itself is level 1)."""
    inner = b"[" * (depth - 1) + b"]" * (depth - 1)
    return b'{"model":"tiny","max_tokens":1,"messages":[{"role":"user","content":"hi"}],"extra":' + inner + b"}"


async def test_nesting_up_to_64_levels_is_read_and_65_is_refused(server):
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post(CHAT, headers=AUTH, data=nested(64)) as response:
            assert response.status == 200, await response.text()
        async with session.post(CHAT, headers=AUTH, data=nested(65)) as response:
            assert response.status == 400
            error = (await response.json())["error"]
            assert error["code"] == "json_too_deep" and "64" in error["message"]
        # application/json with charset=utf-8 is JSON.
        async with session.post(CHAT, headers={**AUTH, "Content-Type": "application/json; charset=UTF-8"},
                                data=body(model="tiny")) as response:
            assert response.status == 200


async def test_a_deep_websocket_message_is_an_error_message_and_the_socket_lives(server):
    async with aiohttp.ClientSession(server.url) as session:
        async with session.ws_connect("/api/stream/ws", headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            await ws.send_str("[" * 100_000)
            reply = await ws.receive_json(timeout=10)
            assert reply["type"] == "error" and reply["code"] == "json_too_deep"
            await ws.send_str('{"type":"request","prompt":' + "[" * 70 + "]" * 70 + "}")
            reply = await ws.receive_json(timeout=10)
            assert reply["code"] == "json_too_deep"
            await ws.send_str("{not json")
            assert (await ws.receive_json(timeout=10))["code"] == "invalid_json"
            await ws.send_str(json.dumps({"type": "request", "request_id": "ok", "model": "tiny", "prompt": "a",
                                          "max_tokens": 2}))
            kinds = [(await ws.receive_json(timeout=30))["type"] for _ in range(4)]
            assert kinds == ["start", "token", "token", "end"]


async def test_health_is_open_but_everything_else_needs_the_token(server):
    async with aiohttp.ClientSession(server.url) as session:
        async with session.get("/health") as response:
            assert response.status == 200
        for path in ("/v1/models", "/metrics", "/api/telemetry", "/openapi.json"):
            async with session.get(path) as response:
                assert response.status == 401, path
                assert (await response.json())["error"]["type"] == "authentication_error"


async def test_queue_full_is_429_with_retry_after(app_server):
    server = await app_server(max_streams=1, max_queue=1)
    async with aiohttp.ClientSession(server.url) as session:
        slow = json.dumps({"model": "mock/constant_rate?min_ms=50&max_ms=50", "prompt": "a b", "max_tokens": 40,
                           "stream": True}).encode()
        first = await session.post("/v1/completions", data=slow, headers=JSON)
        second = await session.post("/v1/completions", data=slow, headers=JSON)  # waits in the queue
        third = await session.post("/v1/completions", data=slow, headers=JSON)
        assert third.status == 429
        assert int(third.headers["Retry-After"]) >= 1
        assert (await third.json())["error"]["type"] == "rate_limit_error"
        assert first.status == 200 and second.status == 200
        for response in (first, second):
            text = await response.text()
            assert text.rstrip().endswith("data: [DONE]")


async def test_error_after_stream_start_is_an_sse_event(app_server, tiny_model, tmp_path):
    """A backend failure mid-stream: an error event, then [DONE]; the next request is fine."""
    server = await app_server(model=str(tiny_model), threads=1)
    backend = server.state.engine.active_backend()
    original = backend._emit
    calls = {"n": 0}

    def failing_emit(seq, token):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated llama.cpp failure")
        return original(seq, token)

    backend._emit = failing_emit
    async with aiohttp.ClientSession(server.url) as session:
        response = await session.post("/v1/completions", headers=JSON, data=json.dumps(
            {"prompt": "abc", "max_tokens": 20, "stream": True, "temperature": 0}))
        text = await response.text()
        frames = [line for line in text.split("\n\n") if line.strip()]
        assert frames[-1] == "data: [DONE]"
        error = json.loads(frames[-2].removeprefix("data: "))["error"]
        assert error["code"] == "generation_failed" and "simulated" in error["message"]
        backend._emit = original
        async with session.post("/v1/completions", headers=JSON, data=json.dumps(
                {"prompt": "abc", "max_tokens": 5})) as again:
            assert again.status == 200
            assert (await again.json())["usage"]["completion_tokens"] == 5
