"""Remote backends through every streaming route of the server, against fake providers that
speak each provider's wire format: the official openai client (streaming and not,
chat and legacy completions), the ABI SSE stream and the WebSocket."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest
from fakes.providers import Script

from abi_tui.server.sse import parse_sse

from .conftest import KEYS, MODELS

JSON = {"Content-Type": "application/json"}
ANSWER = "Hello, remote world!"
PROVIDERS = list(MODELS)
UPSTREAM_PATHS = {"openai": "/v1/chat/completions", "local": "/v1/chat/completions", "ollama": "/api/chat",
                  "anthropic": "/v1/messages"}


_clients: list[openai.AsyncOpenAI] = []


def client(server) -> openai.AsyncOpenAI:
    _clients.append(openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30))
    return _clients[-1]


@pytest.fixture(autouse=True)
async def close_clients():
    yield
    while _clients:
        await _clients.pop().close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_openai_client_streams_with_provider_usage(remote, provider):
    server = await remote.start()
    chunks = [c async for c in await client(server).chat.completions.create(
        model=MODELS[provider], messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})]
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert content == ["Hello", ",", " remote", " world", "!"]  # one chunk per provider delta
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.prompt_tokens == 17 and chunks[-1].usage.completion_tokens == 5  # the provider's
    assert all(c.model == MODELS[provider] for c in chunks)
    assert remote.fakes[provider].bodies(UPSTREAM_PATHS[provider])[0]["stream"] is True


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_openai_client_non_streaming_and_length_finish(remote, provider):
    remote.fakes[provider].script = Script(completion_tokens=42)
    server = await remote.start()
    reply = await client(server).chat.completions.create(
        model=MODELS[provider], messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == ANSWER and reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (17, 42, 59)
    short = await client(server).chat.completions.create(
        model=MODELS[provider], messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    # The provider's own limit reason (length, max_tokens) is OpenAI's "length".
    assert short.choices[0].message.content == "Hello," and short.choices[0].finish_reason == "length"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_legacy_completions_stream(remote, provider):
    server = await remote.start()
    parts = [p async for p in await client(server).completions.create(
        model=MODELS[provider], prompt="Once upon", max_tokens=10, stream=True)]
    assert "".join(p.choices[0].text for p in parts) == ANSWER
    assert parts[-1].choices[0].finish_reason == "stop"
    fake = remote.fakes[provider]
    body = fake.requests[0].body
    if provider in ("openai", "local"):
        assert fake.requests[0].path == "/v1/completions" and body["prompt"] == "Once upon"
        assert body["max_tokens"] == 10
    elif provider == "ollama":  # raw: the prompt is completed as written, no chat template
        assert fake.requests[0].path == "/api/generate" and body["prompt"] == "Once upon" and body["raw"] is True
    else:
        assert body["messages"] == [{"role": "user", "content": "Once upon"}]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_abi_sse_stream(remote, provider):
    server = await remote.start()
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/api/stream", headers=JSON, data=json.dumps(
                {"model": MODELS[provider], "messages": [{"role": "user", "content": "hi"}]})) as response:
            assert response.status == 200
            events = [e for e in parse_sse(await response.text()) if "comment" not in e]
    assert [e["event"] for e in events] == ["abi.start"] + ["abi.token"] * 5 + ["abi.end"]
    assert json.loads(events[0]["data"])["model"] == MODELS[provider]
    assert "".join(json.loads(e["data"])["text"] for e in events[1:-1]) == ANSWER
    end = json.loads(events[-1]["data"])
    assert end["finish_reason"] == "stop" and end["usage"] == {"prompt_tokens": 17, "completion_tokens": 5}


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_websocket_stream(remote, provider):
    server = await remote.start()
    async with aiohttp.ClientSession(server.url) as session:
        async with session.ws_connect("/api/stream/ws") as ws:
            await ws.send_json({"type": "request", "request_id": "r1", "model": MODELS[provider],
                                "prompt": "hi", "max_tokens": 3})
            messages = []
            while not messages or messages[-1]["type"] not in ("end", "error"):
                messages.append(await ws.receive_json(timeout=10))
    assert [m["type"] for m in messages] == ["start", "token", "token", "token", "end"]
    assert "".join(m["text"] for m in messages if m["type"] == "token") == "Hello, remote"
    assert messages[-1]["finish_reason"] == "length" and messages[-1]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_sampling_parameters_in_the_providers_words(remote, provider):
    server = await remote.start()
    await client(server).chat.completions.create(
        model=MODELS[provider], temperature=0.2, top_p=0.9, max_tokens=50, stop=["END"], seed=7,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        extra_body={"top_k": 40})
    fake = remote.fakes[provider]
    request = fake.requests[0]
    body, headers = request.body, request.headers
    if provider in ("openai", "local"):
        assert headers["Authorization"] == f"Bearer {KEYS[provider]}"
        assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
        assert (body["temperature"], body["top_p"], body["stop"], body["seed"]) == (0.2, 0.9, ["END"], 7)
        assert body["stream_options"] == {"include_usage": True}
        if provider == "openai":  # the public API's names, no extensions it would reject
            assert body["max_completion_tokens"] == 50 and "max_tokens" not in body and "top_k" not in body
        else:
            assert body["max_tokens"] == 50 and body["top_k"] == 40
    elif provider == "ollama":
        assert body["model"] == "llama3:8b" and body["messages"][0]["role"] == "system"
        assert body["options"] == {"temperature": 0.2, "top_p": 0.9, "num_predict": 50, "top_k": 40,
                                   "stop": ["END"], "seed": 7}
    else:
        assert headers["x-api-key"] == KEYS["anthropic"] and headers["anthropic-version"] == "2023-06-01"
        assert body["model"] == "claude-fake" and body["system"] == "Be brief."
        assert body["messages"] == [{"role": "user", "content": "hi"}]
        assert (body["max_tokens"], body["temperature"], body["top_p"], body["top_k"], body["stop_sequences"]) \
            == (50, 0.2, 0.9, 40, ["END"])


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_provider_error_keeps_the_providers_message(remote, provider):
    remote.fakes[provider].script = Script(error_status=400, error_message="messages: roles must alternate")
    server = await remote.start()
    with pytest.raises(openai.BadRequestError) as caught:
        await client(server).chat.completions.create(model=MODELS[provider], messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 400
    assert "messages: roles must alternate" in caught.value.message
    assert remote.fakes[provider].generations == 1  # a client error is not retried
    # Streaming: the response has started, so the error arrives as an SSE error event.
    with pytest.raises(openai.APIError) as streamed:
        async for _ in await client(server).chat.completions.create(
                model=MODELS[provider], messages=[{"role": "user", "content": "x"}], stream=True):
            pass
    assert "messages: roles must alternate" in streamed.value.message


async def test_unknown_model_upstream_is_a_404(remote):
    remote.fakes["ollama"].script = Script(error_status=404, error_message='model "nope" not found, try pulling it first')
    server = await remote.start()
    with pytest.raises(openai.NotFoundError) as caught:
        await client(server).chat.completions.create(model="ollama/nope", messages=[{"role": "user", "content": "x"}])
    assert 'model "nope" not found' in caught.value.message
    assert caught.value.body["code"] == "model_not_found"


async def test_rejected_key_is_a_502_naming_the_provider(remote, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    server = await remote.start()
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/v1/chat/completions", headers=JSON, data=json.dumps(
                {"model": MODELS["openai"], "messages": [{"role": "user", "content": "x"}]})) as response:
            body = await response.json()
    # Our client's credentials were fine: it is this server's key for the provider that failed.
    assert response.status == 502 and body["error"]["code"] == "upstream_auth_failed"
    assert "Incorrect API key provided" in body["error"]["message"]


@pytest.mark.parametrize("provider", ["local", "anthropic"])
async def test_rate_limit_passes_retry_after(remote, provider):
    remote.fakes[provider].script = Script(error_status=429, error_message="slow down", retry_after="7")
    server = await remote.start()
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/v1/chat/completions", headers=JSON, data=json.dumps(
                {"model": MODELS[provider], "messages": [{"role": "user", "content": "x"}]})) as response:
            body = await response.json()
    assert response.status == 429 and response.headers["Retry-After"] == "7"
    assert body["error"]["type"] == "rate_limit_error" and "slow down" in body["error"]["message"]


@pytest.mark.parametrize("provider,status", [("local", 503), ("ollama", 500), ("anthropic", 529)])
async def test_server_errors_before_the_first_token_are_retried(remote, provider, status):
    fake = remote.fakes[provider]
    fake.script = Script(error_status=status, error_message="overloaded, try later", fail_first=2)
    server = await remote.start()
    reply = await client(server).chat.completions.create(model=MODELS[provider],
                                                         messages=[{"role": "user", "content": "x"}])
    assert reply.choices[0].message.content == ANSWER
    assert fake.generations == 3  # two failures, then the answer
    fake.script = Script(error_status=status, error_message="overloaded, try later")
    with pytest.raises(openai.APIStatusError) as caught:
        await client(server).chat.completions.create(model=MODELS[provider],
                                                     messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502 and "overloaded, try later" in caught.value.message
    assert fake.generations == 3 + 3  # the first attempt and two retries


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_no_retry_after_the_first_token(remote, provider):
    fake = remote.fakes[provider]
    fake.script = Script(drop_after=2)
    server = await remote.start()
    texts = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in await client(server).chat.completions.create(
                model=MODELS[provider], messages=[{"role": "user", "content": "x"}], stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                texts.append(chunk.choices[0].delta.content)
    assert texts == ["Hello", ","]
    assert "connection" in caught.value.message or "ended" in caught.value.message
    assert fake.generations == 1  # what the client saw cannot be taken back: no retry


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_error_event_in_the_middle_of_the_stream(remote, provider):
    remote.fakes[provider].script = Script(stream_error_after=1, error_message="Overloaded")
    server = await remote.start()
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/api/stream", headers=JSON, data=json.dumps(
                {"model": MODELS[provider], "prompt": "x"})) as response:
            events = [e for e in parse_sse(await response.text()) if "comment" not in e]
    assert [e["event"] for e in events] == ["abi.start", "abi.token", "abi.error"]
    assert "Overloaded" in json.loads(events[-1]["data"])["message"]
    assert remote.fakes[provider].generations == 1


async def test_missing_key_for_the_public_api_fails_fast(remote, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.delenv("OPENAI_API_KEY")
    server = await remote.start()
    with pytest.raises(openai.APIStatusError) as caught:
        await client(server).chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502 and "OPENAI_API_KEY is not set" in caught.value.message


def upstream_temperature(provider: str, body: dict) -> float:
    return body["options"]["temperature"] if provider == "ollama" else body["temperature"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_persona_routing_hook_shapes_the_remote_request(remote, provider):
    # The persona service plugs into the stream routes through `persona_hook` (routes_stream):
    # what it decides (Aviva, her sampling, her system prompt) reaches the provider.
    server = await remote.start()
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/api/stream", headers=JSON, data=json.dumps(
                {"model": MODELS[provider], "persona": "aviva", "prompt": "how do I list files?"})) as response:
            events = [e for e in parse_sse(await response.text()) if "comment" not in e]
    start = json.loads(events[0]["data"])
    assert start["persona"] == "aviva" and start["routing"]["reason"].startswith("Aviva")
    assert "".join(json.loads(e["data"])["text"] for e in events if e["event"] == "abi.token") == ANSWER
    assert upstream_temperature(provider, remote.fakes[provider].requests[0].body) == 0.2
