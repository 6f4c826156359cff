"""Hostile values the fuzzers found or that sit at the edges (issue 11): each is answered with
its status and an OpenAI error object, or served, never a 500, and the server serves on."""

from __future__ import annotations

import json

import aiohttp
import pytest

from .clients import JSON

pytestmark = pytest.mark.reliability

# (name, path, raw body, expected status, expected param or None)
CASES = [
    ("presence penalty on llama.cpp", "/v1/completions",
     {"prompt": "abc", "max_tokens": 3, "presence_penalty": 0.5, "frequency_penalty": 0.5}, 200, None),
    ("repeat penalty on llama.cpp", "/v1/completions", {"prompt": "abc", "max_tokens": 3, "repeat_penalty": 1.3},
     200, None),
    ("repeat penalty zero", "/v1/completions", {"prompt": "abc", "max_tokens": 3, "repeat_penalty": 0}, 400,
     "repeat_penalty"),
    ("huge seed", "/v1/completions", {"prompt": "abc", "max_tokens": 2, "seed": 2**64}, 200, None),
    ("huge top_k", "/v1/completions", {"prompt": "abc", "max_tokens": 2, "top_k": 2**63}, 200, None),
    ("lone surrogate prompt", "/v1/completions", '{"prompt": "\\ud800", "max_tokens": 2}', 400, "prompt"),
    ("lone surrogate in a message", "/v1/chat/completions",
     '{"messages": [{"role": "user", "content": "a\\udfff"}], "max_tokens": 2}', 400, "messages[0].content"),
    ("lone surrogate key", "/api/stream", '{"prompt": "a", "\\ud800": 1}', 400, None),
    ("header injection in request_id", "/api/stream", {"prompt": "a", "request_id": "x\r\nSet-Cookie: a=b"}, 400,
     "request_id"),
    ("endless mock stream", "/api/stream", {"model": "mock/constant_rate", "prompt": "a", "max_tokens": 10**9}, 400,
     "max_tokens"),
    ("include_usage not a bool", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "a"}], "stream": True, "stream_options": {"include_usage": {}}}, 400,
     "stream_options.include_usage"),
    ("embeddings model not a string", "/v1/embeddings", {"input": "a", "model": {}}, 400, "model"),
    ("persona chat model not a string", "/api/v1/chat", {"content": "hello", "model": 5}, 400, "model"),
    ("logit_bias key in another script", "/v1/completions",
     {"prompt": "a", "max_tokens": 1, "logit_bias": {"\u0661": 1}}, 400, "logit_bias"),
    ("tools off", "/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "max_tokens": 1,
                                           "tools": [], "tool_choice": "none", "logprobs": False}, 200, None),
    ("logprobs as 0.0", "/v1/completions", {"prompt": "a", "max_tokens": 1, "logprobs": 0.0}, 200, None),
    ("prompt not a string beside messages", "/api/stream",
     {"prompt": 5, "messages": [{"role": "user", "content": "a"}]}, 400, "prompt"),
    ("blank model name means the default", "/v1/completions", {"prompt": "a", "max_tokens": 1, "model": " \x1c"},
     200, None),
    ("model name too long for the file system", "/v1/completions",
     {"prompt": "a", "max_tokens": 1, "model": "m" * 5000}, 404, "model"),
    ("model under an unknown user's home", "/v1/completions",
     {"prompt": "a", "max_tokens": 1, "model": "~nosuchuser/m.gguf"}, 404, "model"),
]


async def test_hostile_values_get_their_status_and_the_server_serves_on(app_server, tiny_model, figures):
    server = await app_server(model=str(tiny_model), threads=1, n_ctx=512)
    async with aiohttp.ClientSession(server.url) as session:
        for name, path, body, status, param in CASES:
            data = body if isinstance(body, str) else json.dumps(body)
            async with session.post(path, data=data, headers=JSON) as response:
                text = await response.text()
                assert response.status == status, f"{name}: {response.status} {text[:300]}"
                if status >= 400:
                    error = json.loads(text)["error"]
                    assert set(error) == {"message", "type", "param", "code"}, name
                    if param is not None:
                        assert error["param"] == param, f"{name}: {error}"
            async with session.post("/v1/completions", data=json.dumps({"prompt": "abc", "max_tokens": 2}),
                                    headers=JSON) as response:
                assert response.status == 200, name
        # The WebSocket answers a lone surrogate with an error message and stays usable.
        async with session.ws_connect("/api/stream/ws") as ws:
            await ws.send_str('{"type": "request", "prompt": "\\udc00", "max_tokens": 2}')
            message = json.loads(await ws.receive_str(timeout=10))
            assert message["type"] == "error" and message["code"] == "invalid_request"
            await ws.send_str(json.dumps({"type": "request", "prompt": "a", "max_tokens": 2}))
            kinds = [json.loads(await ws.receive_str(timeout=30))["type"] for _ in range(4)]
            assert kinds == ["start", "token", "token", "end"]
    figures.set(hostile_inputs=len(CASES) + 1)


async def test_a_long_persona_conversation_never_outgrows_the_context(app_server, tiny_model, figures):
    """Earlier turns are trimmed to what the context leaves after the persona's prompt, the
    memory note, the message and the answer (found by the SIGKILL soak: turn ~40 got a 400)."""
    server = await app_server(model=str(tiny_model), threads=1, n_ctx=4096, parallel=1)
    conversation = None
    async with aiohttp.ClientSession(server.url) as session:
        for turn in range(20):
            body = {"content": f"turn {turn}: " + "tell me about gardens and weather " * 8, "stream": False,
                    "max_tokens": 16, **({"conversation_id": conversation} if conversation else {})}
            async with session.post("/api/v1/chat", data=json.dumps(body), headers=JSON) as response:
                assert response.status == 200, f"turn {turn}: {await response.text()}"
                conversation = (await response.json())["conversation_id"]
    figures.set(turns=20)


# ----------------------------------------------------------------------------- deep nesting
BODY_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/api/stream", "/admin/reload",
               "/api/models/pull", "/api/v1/chat", "/api/v1/personas/route", "/api/v1/conversations")


def deep_bodies(levels: int) -> dict[str, bytes]:
    opened, closed = b"[" * levels, b"]" * levels
    return {
        "top level": opened + closed,
        "top level, never closed": opened,
        "objects": b'{"a":' * levels + b"1" + b"}" * levels,
        "inside messages": b'{"messages":' + opened + closed + b"}",
        "inside content": b'{"messages":[{"role":"user","content":' + opened + closed + b"}]}",
        "inside a prompt list": b'{"prompt":[' + opened + closed + b"]}",
        "mixed": b'[{"x":' * (levels // 2 + 1) + b"0" + b"}]" * (levels // 2 + 1),
    }


async def test_deep_nesting_is_a_400_on_every_route_and_the_server_lives(app_server, figures):
    server = await app_server()
    tried = 0
    ws_url = server.url + "/api/stream/ws"
    async with aiohttp.ClientSession(server.url) as session:
        for levels in (65, 1_000, 50_000):  # 50 000 levels: about 100 KB, the size in the issue
            for name, raw in deep_bodies(levels).items():
                for path in BODY_ROUTES:
                    async with session.post(path, data=raw, headers=JSON) as response:
                        tried += 1
                        body = await response.json()
                        assert response.status == 400, (levels, name, path, body)
                        assert body["error"]["code"] == "json_too_deep" and "64" in body["error"]["message"]
                async with session.ws_connect(ws_url) as ws:
                    await ws.send_str(raw.decode())
                    tried += 1
                    reply = await ws.receive_json(timeout=10)
                    assert reply["type"] == "error" and reply["code"] == "json_too_deep", (name, reply)
                    await ws.send_str(json.dumps({"type": "request", "prompt": "a b", "max_tokens": 2,
                                                  "model": "mock/constant_rate?min_ms=1&max_ms=1"}))
                    kinds = [(await ws.receive_json(timeout=10))["type"] for _ in range(4)]
                    assert kinds == ["start", "token", "token", "end"]  # the same socket serves on
            async with session.post("/v1/chat/completions", headers=JSON, data=json.dumps(
                    {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                     "model": "mock/constant_rate?min_ms=1&max_ms=1"})) as response:
                assert response.status == 200
    figures.set(hostile_inputs=tried)
