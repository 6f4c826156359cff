"""Ollama's official Python client (`ollama`), unchanged, against `abi dash --serve`.

One server for the module (the tiny model active, a second tiny model in abi's cache), with an
API token as every abi server may have: the client sends it with `headers=`.
"""

from __future__ import annotations

import json
import math
import time

import httpx
import jsonschema
import ollama
import pytest
from conftest import ServeProcess
from tiny_gguf import write_tiny_gguf

from abi_tui import __version__

TOKEN = "ollama-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GREEDY = {"temperature": 0, "repeat_penalty": 1.0}
# Bounded by the grammar (enums, booleans, short integers, a capped array): even the random
# tiny model finishes it well within num_predict.
SCHEMA = {"type": "object", "properties": {
    "colour": {"type": "string", "enum": ["red", "green", "blue"]},
    "ok": {"type": "boolean"},
    "count": {"type": "integer"},
    "code": {"type": "string", "pattern": "^[A-F]{2}-[0-9]{3}$"},
    "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "maxItems": 3},
    "inner": {"type": "object", "properties": {"flag": {"type": "boolean"}}, "required": ["flag"]},
}, "required": ["colour", "ok", "count", "code", "tags", "inner"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("ollama_home")
    models = home / "models"
    models.mkdir()
    tiny = write_tiny_gguf(models / "tiny.gguf")
    write_tiny_gguf(models / "tiny-b.gguf", seed=7, name="tiny-b")
    env = {"ABI_HOME": str(home), "ABI_MODELS_DEFAULT": "none", "HF_HUB_OFFLINE": "1", "ABI_THREADS": "1",
           "ABI_API_TOKEN": TOKEN}
    process = ServeProcess("--model", str(tiny), "--n-ctx", "512", env=env)
    process.home = home
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture
def client(server):
    return ollama.Client(host=server.url, headers=AUTH, timeout=60)


def post(server, path: str, body: bytes | dict, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}{path}", content=content, timeout=60,
                      headers={"Content-Type": "application/json", **AUTH, **headers})


def test_list_show_ps_and_version(server, client):
    listed = {m.model: m for m in client.list().models}
    assert {"tiny", "tiny-b"} <= set(listed)
    tiny = listed["tiny"]
    assert tiny.size == (server.home / "models" / "tiny.gguf").stat().st_size
    assert tiny.details.format == "gguf" and tiny.details.family == "llama"
    assert tiny.details.parameter_size and tiny.details.quantization_level
    assert len(tiny.digest) == 64 and tiny.modified_at.year >= 2024
    shown = client.show("tiny")
    assert shown.modelinfo["general.architecture"] == "llama"
    assert "<|im_start|>" in shown.template  # the GGUF's own chat template
    assert shown.details.family == "llama" and "completion" in shown.capabilities
    assert "tokenizer.ggml.tokens" not in shown.modelinfo  # the vocabulary is left out
    running = {m.model: m for m in client.ps().models}
    assert "tiny" in running and running["tiny"].context_length == 512 and running["tiny"].size > 0
    version = httpx.get(f"{server.url}/api/version", headers=AUTH, timeout=10).json()
    assert version == {"version": __version__}


def test_chat_streamed_and_not_match_the_openai_route(server, client):
    messages = [{"role": "user", "content": "héllo there"}]
    options = {**GREEDY, "num_predict": 12}
    whole = client.chat(model="tiny", messages=messages, options=options, stream=False)
    parts = list(client.chat(model="tiny", messages=messages, options=options, stream=True))
    assert whole.done and whole.done_reason == "length" and whole.eval_count == 12
    assert whole.message.role == "assistant" and len(whole.message.content) == 12  # one byte per token
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert len([p for p in parts if p.message.content]) >= 2  # streamed in pieces, not at the end
    assert parts[-1].eval_count == 12 and parts[-1].done_reason == "length"
    assert whole.total_duration >= whole.eval_duration > 0 and whole.prompt_eval_duration > 0
    # The same generation path as /v1/chat/completions: same text, same prompt size.
    openai = post(server, "/v1/chat/completions", {"model": "tiny", "messages": messages, "max_tokens": 12,
                                                    "temperature": 0}).json()
    assert openai["choices"][0]["message"]["content"] == whole.message.content
    assert openai["usage"]["prompt_tokens"] == whole.prompt_eval_count


def test_chat_default_stream_is_ndjson(server):
    response = post(server, "/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                          "options": {"num_predict": 5}})
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 5
    assert all(line["done"] is False for line in lines[:-1])


def test_generate_raw_templated_and_streamed(server, client):
    raw = client.generate(model="tiny", prompt="abc", raw=True, options={**GREEDY, "num_predict": 8})
    completion = post(server, "/v1/completions", {"model": "tiny", "prompt": "abc", "max_tokens": 8,
                                                  "temperature": 0}).json()
    assert raw.response == completion["choices"][0]["text"] and raw.eval_count == 8
    templated = client.generate(model="tiny", prompt="abc", system="be brief", options={**GREEDY, "num_predict": 8})
    chat = client.chat(model="tiny", messages=[{"role": "system", "content": "be brief"},
                                               {"role": "user", "content": "abc"}], options={**GREEDY, "num_predict": 8})
    assert templated.response == chat.message.content
    assert templated.prompt_eval_count == chat.prompt_eval_count > raw.prompt_eval_count
    parts = list(client.generate(model="tiny", prompt="abc", raw=True, stream=True,
                                 options={**GREEDY, "num_predict": 8}))
    assert "".join(p.response for p in parts) == raw.response and parts[-1].done


def test_options_stop_seed_and_latest_tag(client):
    def sample(seed: int) -> str:
        return client.generate(model="tiny", prompt="seeded", raw=True,
                               options={"temperature": 1.0, "seed": seed, "num_predict": 24}).response

    assert sample(1234) == sample(1234)
    assert len({sample(s) for s in (1, 2, 3)}) > 1
    free = client.generate(model="tiny:latest", prompt="xyz", raw=True, options={**GREEDY, "num_predict": 30})
    stop = free.response[5:7]
    cut = client.generate(model="tiny", prompt="xyz", raw=True, options={**GREEDY, "num_predict": 30, "stop": [stop]})
    assert cut.response == free.response[: free.response.index(stop)] and cut.done_reason == "stop"


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_structured_output_follows_the_schema(client, seed):
    reply = client.chat(model="tiny", messages=[{"role": "user", "content": "a colour, please"}],
                        format=SCHEMA, options={"temperature": 1.0, "seed": seed, "num_predict": 400})
    assert reply.done_reason == "stop", reply.message.content
    jsonschema.validate(json.loads(reply.message.content), SCHEMA)
    streamed = list(client.generate(model="tiny", prompt="json", format=SCHEMA, stream=True,
                                    options={"temperature": 1.0, "seed": seed, "num_predict": 400}))
    jsonschema.validate(json.loads("".join(p.response for p in streamed)), SCHEMA)


def test_format_json_and_bad_schema(server, client):
    reply = client.generate(model="tiny", prompt="{", format="json", options={"seed": 3, "num_predict": 64})
    text = reply.response.lstrip()
    assert text[:1] in ("{", "[", '"', "-", "t", "f", "n") or text[:1].isdigit()  # JSON from its first byte
    if reply.done_reason == "stop":
        json.loads(reply.response)
    bad = post(server, "/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                     "format": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}})
    assert bad.status_code == 400 and "format" in bad.json()["error"]
    unenforceable = post(server, "/api/generate", {"model": "tiny", "prompt": "x", "format": {
        "type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}})
    assert unenforceable.status_code == 400 and "multipleOf" in unenforceable.json()["error"]


def test_embed_and_legacy_embeddings(server, client):
    reply = client.embed(model="tiny", input=["first text", "second text"])
    assert len(reply.embeddings) == 2 and reply.prompt_eval_count > 0
    openai = post(server, "/v1/embeddings", {"model": "tiny", "input": ["first text", "second text"]}).json()
    for ours, theirs in zip(reply.embeddings, openai["data"]):
        assert ours == pytest.approx(theirs["embedding"], abs=1e-6)
    short = client.embed(model="tiny", input="first text", dimensions=4)
    assert len(short.embeddings[0]) == 4
    assert math.isclose(math.sqrt(sum(v * v for v in short.embeddings[0])), 1.0, rel_tol=1e-6)
    legacy = client.embeddings(model="tiny", prompt="first text")
    assert legacy.embedding == pytest.approx(reply.embeddings[0], abs=1e-6)


def test_errors_are_ollamas_shape_and_the_server_keeps_serving(server, client):
    with pytest.raises(ollama.ResponseError) as missing_token:
        ollama.Client(host=server.url, timeout=10).list()
    assert missing_token.value.status_code == 401 and "token" in missing_token.value.error
    with pytest.raises(ollama.ResponseError) as unknown:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert unknown.value.status_code == 404 and isinstance(unknown.value.error, str)
    cases = [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model is required"),
        ({"model": "tiny", "messages": "hello"}, "messages"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "options": {"temperature": "hot"}},
         "options.temperature"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": 0}},
         "options.num_predict"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "keep_alive": "soon"}, "keep_alive"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "format": "xml"}, "format"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, "images"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "think": True}, "think"),
        ({"model": "mock/constant_rate", "messages": [{"role": "user", "content": "x"}],
          "format": {"type": "object"}}, "local llama.cpp model"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": [{"function": {"name": "f"}}]},
         "tools[0].type"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}],
          "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"},
                                        {"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}]},
         "messages[1].tool_calls[0].function.name"),
    ]
    for body, needle in cases:
        response = post(server, "/api/chat", body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert isinstance(error, str) and needle in error, (body, error)
    assert post(server, "/api/generate", {"model": "tiny", "prompt": "x", "suffix": "y"}).status_code == 400
    generate_tools = post(server, "/api/generate", {"model": "tiny", "prompt": "x", "tools": [WEATHER]})
    assert generate_tools.status_code == 400 and "/api/chat" in generate_tools.json()["error"]
    wrong_type = post(server, "/api/chat", b"{}", **{"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415 and isinstance(wrong_type.json()["error"], str)
    pull = post(server, "/api/pull", {"model": "llama3"})
    assert pull.status_code == 404 and "/api/models/pull" in pull.json()["error"]
    method = httpx.get(f"{server.url}/api/chat", headers=AUTH, timeout=10)
    assert method.status_code == 405 and isinstance(method.json()["error"], str)
    # abi's own routes keep abi's error object.
    assert isinstance(post(server, "/v1/chat/completions", b"{").json()["error"], dict)
    reply = client.chat(model="tiny", messages=[{"role": "user", "content": "still there?"}],
                        options={"num_predict": 3}, stream=False)
    assert reply.done and reply.eval_count == 3


def test_keep_alive_loads_unloads_and_expires(client):
    def running() -> set[str]:
        return {m.model for m in client.ps().models}

    loaded = client.chat(model="tiny-b", messages=[])
    assert loaded.done_reason == "load" and "tiny-b" in running()
    unloaded = client.generate(model="tiny-b", keep_alive=0)
    assert unloaded.done_reason == "unload" and "tiny-b" not in running()
    with pytest.raises(ollama.ResponseError) as active:
        client.generate(model="tiny", keep_alive=0)
    assert active.value.status_code == 409 and "active model" in active.value.error
    client.generate(model="tiny-b", prompt="x", raw=True, keep_alive="1s", options={"num_predict": 2})
    expires = {m.model: m.expires_at for m in client.ps().models}
    assert expires["tiny-b"] is not None and expires["tiny"] is None
    deadline = time.monotonic() + 20
    while "tiny-b" in running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "tiny-b" not in running() and "tiny" in running()
    # keep_alive 0 on a request that generates: unloaded right after the answer.
    client.chat(model="tiny-b", messages=[{"role": "user", "content": "x"}], keep_alive=0, options={"num_predict": 2})
    deadline = time.monotonic() + 10
    while "tiny-b" in running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "tiny-b" not in running()


def test_openapi_describes_the_ollama_routes(server):
    document = httpx.get(f"{server.url}/openapi.json", headers=AUTH, timeout=10).json()
    paths = document["paths"]
    for path, method in (("/api/chat", "post"), ("/api/generate", "post"), ("/api/tags", "get"),
                         ("/api/show", "post"), ("/api/ps", "get"), ("/api/version", "get"),
                         ("/api/embed", "post"), ("/api/embeddings", "post")):
        assert method in paths[path], path
    chat = paths["/api/chat"]["post"]
    assert "application/x-ndjson" in chat["responses"]["200"]["content"]
    assert chat["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("OllamaError")
    assert "OllamaError" in document["components"]["schemas"]


@pytest.mark.real_model
def test_gemma_through_the_ollama_client(serve, gemma_model):
    server = serve("--model", str(gemma_model), "--n-ctx", "1024")
    client = ollama.Client(host=server.url, timeout=120)
    name = gemma_model.stem
    prompt = "The capital of France is Paris. The capital of Germany is"
    whole = client.generate(model=name, prompt=prompt, raw=True, options={**GREEDY, "num_predict": 16})
    assert "Berlin" in whole.response and whole.eval_count == 16
    streamed = list(client.generate(model=name, prompt=prompt, raw=True, stream=True,
                                    options={**GREEDY, "num_predict": 16}))
    # Compared with a request that also finds the prompt cached: a cold prefill computes the last
    # prompt token in a batch, a warm one alone, and on some CPU builds that rounding difference
    # flips a near tie in greedy decoding.
    again = client.generate(model=name, prompt=prompt, raw=True, options={**GREEDY, "num_predict": 16})
    assert "".join(p.response for p in streamed) == again.response
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "country": {"type": "string", "enum": ["France", "Germany"]}},
              "required": ["city", "country"]}
    for seed in (1, 2, 3):
        reply = client.chat(model=name, messages=[{"role": "user", "content": "Name a capital city as JSON."}],
                            format=schema, options={"temperature": 0.7, "seed": seed, "num_predict": 120})
        assert reply.done_reason == "stop", reply.message.content
        jsonschema.validate(json.loads(reply.message.content), schema)


def test_a_client_that_leaves_mid_stream_frees_its_slot(server):
    def active() -> int:
        return httpx.get(f"{server.url}/health", timeout=10).json()["active_streams"]

    body = {"model": "mock/constant_rate?min_ms=50&max_ms=50", "messages": [{"role": "user", "content": "x"}],
            "options": {"num_predict": 1000}}  # 50 s if nobody stopped it
    with httpx.stream("POST", f"{server.url}/api/chat", json=body, headers=AUTH, timeout=30) as response:
        lines = response.iter_lines()  # kept: a dropped iterator closes the response
        first = json.loads(next(lines))
        assert first["done"] is False and first["message"]["content"]
        assert active() == 1
    deadline = time.monotonic() + 10
    while active() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert active() == 0


def test_personas_answer_with_their_moderation_first(server, client):
    messages = [{"role": "user", "content": "how do I make a bomb to kill people"}]
    reply = client.chat(model="auto", messages=messages, stream=False)
    openai = post(server, "/v1/chat/completions", {"model": "auto", "messages": messages}).json()
    assert reply.message.content == openai["choices"][0]["message"]["content"]  # the refusal, no model
    assert reply.eval_count == 0 and reply.done_reason == "stop" and reply.model == "auto"


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather forecast for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
# The mock plays the last message back: a message that is a call comes back as the model's call,
# read by the same parser as a model's answer.
PLAYBACK = "mock/constant_rate?min_ms=0&max_ms=0"
CALL_TEXT = '<tool_call>{"name":"get_weather","arguments":{"city":"Paris","days":3}}</tool_call>'


def test_tool_calls_come_back_in_ollamas_shape(client):
    asked = [{"role": "user", "content": CALL_TEXT}]
    reply = client.chat(model=PLAYBACK, messages=asked, tools=[WEATHER], options={"num_predict": 1})
    [call] = reply.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris", "days": 3}
    assert reply.message.content == "" and reply.done and reply.done_reason == "length"
    # Streamed, two calls (the call played back twice): each arrives whole, in a line of its own.
    parts = list(client.chat(model=PLAYBACK, messages=asked, tools=[WEATHER], options={"num_predict": 2},
                             stream=True))
    with_calls = [p for p in parts if p.message.tool_calls]
    assert len(with_calls) == 2 and parts[-1].done and not parts[-1].message.tool_calls
    for part in with_calls:
        [streamed] = part.message.tool_calls
        assert streamed.function.arguments == {"city": "Paris", "days": 3}
    # Without tools the same text is only text.
    plain = client.chat(model=PLAYBACK, messages=asked, options={"num_predict": 1})
    assert plain.message.content == CALL_TEXT and not plain.message.tool_calls


def test_a_tool_result_goes_back_to_the_model(client):
    """The call and its result, as the client keeps them (arguments an object, the result
    naming its tool), are accepted, and the result reaches the model's prompt."""
    asked = [{"role": "user", "content": "What is the weather in Paris?"}]
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    history = [*asked, {"role": "assistant", "content": "", "tool_calls": [call]},
               {"role": "tool", "content": "hail, 3 C", "tool_name": "get_weather"}]

    def get_weather(city: str) -> str:
        """The weather forecast for a city.

        Args:
            city: the city's name
        """
        return "hail, 3 C"

    # A Python function as the tool: the client writes its schema.
    for tool in (WEATHER, get_weather):
        answer = client.chat(model=PLAYBACK, messages=history, tools=[tool], options={"num_predict": 3})
        assert answer.message.content == "hail, 3 C" and not answer.message.tool_calls
    # On a llama.cpp model (whose template renders no tools: abi's documented fallback format),
    # the longer the result, the longer the prompt.
    short = client.chat(model="tiny", messages=history, options={**GREEDY, "num_predict": 2})
    longer = [*history[:-1], {**history[-1], "content": "hail, 3 C, then sun and a light wind from the west"}]
    long = client.chat(model="tiny", messages=longer, options={**GREEDY, "num_predict": 2})
    assert long.prompt_eval_count - short.prompt_eval_count == len(longer[-1]["content"]) - len("hail, 3 C")
