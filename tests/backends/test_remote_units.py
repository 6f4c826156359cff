"""The pieces of the remote backends that need no server: breaker, error mapping, endpoint
configuration, stream parsers, and how the engine routes model ids."""

from __future__ import annotations

import shutil

import pytest

from abi_tui.backends.base import GenerationRequest, SamplingParams
from abi_tui.backends.engine import InferenceEngine
from abi_tui.backends.remote.anthropic import AnthropicBackend
from abi_tui.backends.remote.breaker import CircuitBreaker
from abi_tui.backends.remote.endpoints import endpoints_from_settings, ollama_url
from abi_tui.backends.remote.errors import (
    CircuitOpen,
    UpstreamError,
    UpstreamRateLimited,
    provider_message,
    upstream_error,
)
from abi_tui.backends.remote.ollama import OllamaBackend
from abi_tui.backends.remote.openai_compat import OpenAICompatBackend
from abi_tui.backends.remote.policy import POLICY_KEYS, RemotePolicy
from abi_tui.backends.remote.registry import RemoteRegistry, register_remote_backends
from abi_tui.backoff import retry_after_s
from abi_tui.config import ENDPOINT_POLICY_KEYS, Settings, endpoint_config, load_settings
from abi_tui.errors import ContextLengthExceeded, InvalidRequest, ModelNotFound
from abi_tui.net.sse import SseDecoder


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_policy_defaults_are_the_specs():
    policy = RemotePolicy()
    assert (policy.connect_timeout_s, policy.first_token_timeout_s, policy.between_tokens_timeout_s) == (10, 60, 30)
    assert (policy.breaker_failures, policy.breaker_open_s) == (5, 30)


def test_breaker_opens_after_five_failures_and_probes_after_its_window():
    clock = Clock()
    breaker = CircuitBreaker("p", failures=5, open_s=30, clock=clock)
    for _ in range(4):
        assert breaker.acquire() is False
        breaker.record_failure("timeout", probe=False)
    assert breaker.state == "closed"
    breaker.record_success()  # consecutive failures only
    for _ in range(5):
        breaker.record_failure("timeout", probe=False)
    assert breaker.state == "open"
    clock.now += 10
    with pytest.raises(CircuitOpen) as caught:
        breaker.acquire()
    assert caught.value.status == 503 and caught.value.retry_after == pytest.approx(20)
    assert "timeout" in caught.value.message
    clock.now += 20
    assert breaker.state == "half_open"
    assert breaker.acquire() is True  # one probe...
    with pytest.raises(CircuitOpen):
        breaker.acquire()  # ...at a time
    breaker.release(probe=True)  # the probe was cancelled: another may go
    assert breaker.acquire() is True
    breaker.record_failure("still down", probe=True)
    assert breaker.state == "open" and breaker.retry_after == pytest.approx(30)
    clock.now += 30
    assert breaker.acquire() is True
    breaker.record_success()
    assert breaker.state == "closed" and breaker.acquire() is False


@pytest.mark.parametrize("body,expected", [
    (b'{"error": {"message": "bad key", "type": "invalid_request_error", "code": "invalid_api_key", "param": null}}',
     ("bad key", "invalid_api_key", "invalid_request_error", None)),
    (b'{"error": "model \\"x\\" not found"}', ('model "x" not found', None, None, None)),
    (b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
     ("Overloaded", None, "overloaded_error", None)),
    (b'{"object": "error", "message": "vllm says no", "code": 400}', ("vllm says no", None, None, None)),
    (b"<html>502 Bad Gateway</html>", ("<html>502 Bad Gateway</html>", None, None, None)),
])
def test_provider_messages_are_kept(body, expected):
    assert provider_message(body) == expected


def test_status_mapping():
    assert isinstance(upstream_error("p", 400, "m"), InvalidRequest)
    assert upstream_error("p", 422, "m").status == 400
    assert isinstance(upstream_error("p", 404, "m"), ModelNotFound)
    assert isinstance(upstream_error("p", 400, "m", code="context_length_exceeded"), ContextLengthExceeded)
    assert isinstance(upstream_error("p", 400, "prompt is too long: 300000 tokens > 200000 maximum"),
                      ContextLengthExceeded)
    limited = upstream_error("p", 429, "m", retry_after=12)
    assert isinstance(limited, UpstreamRateLimited) and limited.retry_after == 12
    auth = upstream_error("p", 401, "m")
    assert auth.status == 502 and auth.code == "upstream_auth_failed" and not auth.failure and not auth.retryable
    for status in (500, 502, 503, 529):
        error = upstream_error("p", status, "down")
        assert isinstance(error, UpstreamError) and error.status == 502 and error.retryable and error.failure
        assert error.message == f"p answered {status}: down"


def test_retry_after_headers():
    assert retry_after_s({"Retry-After": "7"}) == 7
    assert retry_after_s({"retry-after-ms": "1500", "Retry-After": "7"}) == 1.5
    assert retry_after_s({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0
    assert retry_after_s({}) is None


@pytest.mark.parametrize("host,url", [
    ("127.0.0.1:11434", "http://127.0.0.1:11434"), ("localhost", "http://localhost:11434"),
    ("0.0.0.0", "http://127.0.0.1:11434"), ("http://box", "http://box:80"),
    ("https://ollama.example.com", "https://ollama.example.com:443"), ("http://[::1]:9000/", "http://[::1]:9000"),
])
def test_ollama_host_like_ollama_reads_it(host, url):
    assert ollama_url(host) == url


def settings_with(endpoints: dict) -> Settings:
    settings = Settings(home=load_settings().home)
    settings.endpoints = {name: endpoint_config(name, table) for name, table in endpoints.items()}
    return settings


def test_the_config_keys_are_the_policy_fields():
    assert set(ENDPOINT_POLICY_KEYS) == POLICY_KEYS


def test_endpoints_from_environment_and_config():
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "OLLAMA_HOST": "127.0.0.1:2"}
    endpoints = endpoints_from_settings(settings_with({
        "vllm": {"url": "http://gpu:8000/v1/", "api_key_env": "VLLM_KEY", "first_token_timeout_s": 120},
        "box": {"url": "http://box:11434", "kind": "ollama", "max_concurrency": 2},
        "ollama": {"url": "http://ignored:1", "retries": 0},
    }), env)
    assert endpoints["openai"].url == "http://127.0.0.1:1/v1" and endpoints["openai"].api_key_env == "OPENAI_API_KEY"
    assert endpoints["ollama"].url == "http://127.0.0.1:2"  # the environment wins over config.toml
    assert endpoints["ollama"].policy.retries == 0
    assert endpoints["anthropic"].url == "https://api.anthropic.com" and endpoints["anthropic"].public
    vllm = endpoints["vllm"]
    assert (vllm.kind, vllm.url, vllm.api_key_env) == ("openai", "http://gpu:8000/v1", "VLLM_KEY")
    assert vllm.policy.first_token_timeout_s == 120 and vllm.policy.connect_timeout_s == 10
    assert endpoints["box"].kind == "ollama" and endpoints["box"].capacity == 2


def test_test_policy_replaces_defaults_but_not_what_a_table_says():
    endpoints = endpoints_from_settings(settings_with({"e": {"url": "http://x/v1", "retries": 4}}), {},
                                           RemotePolicy(first_token_timeout_s=0.3, retries=0))
    assert endpoints["e"].policy.first_token_timeout_s == 0.3 and endpoints["e"].policy.retries == 4
    assert endpoints["openai"].policy.retries == 0


def request(**params) -> GenerationRequest:
    return GenerationRequest(model=None, messages=[{"role": "user", "content": "hi"}],
                             params=SamplingParams(**params))


def test_defaults_are_not_sent_where_providers_reject_them():
    registry = RemoteRegistry(settings_with({"e": {"url": "http://x/v1"}}), env={})
    anthropic = registry.backend("anthropic/claude")
    assert isinstance(anthropic, AnthropicBackend)
    body = anthropic.build(request()).body
    # Recent Claude models refuse temperature and top_p together; 1.0 is the API's default.
    assert "temperature" not in body and "top_p" not in body and body["max_tokens"] == 4096
    with pytest.raises(InvalidRequest):
        anthropic.build(request(json_mode=True))
    openai_body = registry.backend("openai/o3").build(request()).body
    assert openai_body["temperature"] == 1.0 and "top_p" not in openai_body and "max_completion_tokens" not in openai_body
    assert registry.backend("e/m").build(request(json_mode=True)).body["response_format"] == {"type": "json_object"}
    assert registry.backend("ollama/m").build(request(json_mode=True)).body["format"] == "json"


def test_parsers_read_the_documented_streams():
    registry = RemoteRegistry(settings_with({}), env={})
    openai_backend = registry.backend("openai/m")
    assert isinstance(openai_backend, OpenAICompatBackend)
    call = openai_backend.build(request())
    parse = openai_backend.parse(call)
    lines = [b": keep-alive", b"", b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}',
             b"", b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}],"usage":null}', b"",
             b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}', b"",
             b"data: [DONE]", b""]
    deltas = [d for event in SseDecoder().feed(b"\n".join(lines) + b"\n") for d in parse(event)]
    assert [d.text for d in deltas if d.text] == ["Hi"]
    assert [d.finish for d in deltas if d.finish] == ["length"]
    assert [(d.usage.prompt_tokens, d.usage.completion_tokens) for d in deltas if d.usage] == [(3, 1)]
    assert deltas[-1].done

    ollama = registry.backend("ollama/m")
    assert isinstance(ollama, OllamaBackend)
    parse = ollama.parse(ollama.build(request()))
    last = parse(b'{"message":{"role":"assistant","content":""},"done":true,"done_reason":"length",'
                 b'"prompt_eval_count":9,"eval_count":4}')[0]
    assert last.done and last.finish == "length" and (last.usage.prompt_tokens, last.usage.completion_tokens) == (9, 4)
    error = parse(b'{"error":"out of memory"}')[0].error
    assert error is not None and "out of memory" in error.message

    anthropic = registry.backend("anthropic/m")
    parse = anthropic.parse(anthropic.build(request()))
    events = [b"event: message_start",
              b'data: {"type":"message_start","message":{"usage":{"input_tokens":5,"cache_read_input_tokens":3,'
              b'"output_tokens":1}}}', b"",
              b"event: content_block_delta",
              b'data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}', b"",
              b"event: content_block_delta",
              b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Yo"}}', b"",
              b"event: message_delta",
              b'data: {"type":"message_delta","delta":{"stop_reason":"stop_sequence"},"usage":{"output_tokens":2}}', b"",
              b"event: message_stop", b'data: {"type":"message_stop"}', b""]
    deltas = [d for event in SseDecoder().feed(b"\r\n".join(events) + b"\r\n") for d in parse(event)]
    assert [d.text for d in deltas if d.text] == ["Yo"]  # thinking is not answer text
    assert [d.finish for d in deltas if d.finish] == ["stop"]
    assert (deltas[-1].usage.prompt_tokens, deltas[-1].usage.completion_tokens) == (8, 2) and deltas[-1].done


def test_engine_routes_remote_prefixes_and_leaves_local_models_alone(tiny_model, abi_home, monkeypatch):
    settings = load_settings()
    settings.endpoints = {"upstream": endpoint_config("upstream", {"url": "http://127.0.0.1:1/v1"})}
    settings.server.model_dirs = [str(tiny_model.parent), str(abi_home)]  # where clients may name files
    engine = InferenceEngine(settings)
    register_remote_backends(engine, settings)
    assert set(engine.remote_factories) == {"openai", "ollama", "anthropic", "upstream"}
    for model_id, lane in [("ollama/llama3", "remote:ollama"), ("ollama/llama3:8b-instruct", "remote:ollama"),
                           ("upstream/meta-llama/Llama-3-8B", "remote:upstream"), ("openai/gpt-4o", "remote:openai")]:
        assert engine.target(model_id).lane == lane
    assert engine.remote_factories["ollama"]("ollama/llama3") is engine.remote_factories["ollama"]("ollama/llama3")
    # Paths, absolute or relative with a slash, whose first part is no endpoint stay local.
    assert engine.target(str(tiny_model)).lane == "tiny"
    local = abi_home / "someowner"
    local.mkdir()
    shutil.copy(tiny_model, local / "tiny-owned.gguf")
    monkeypatch.chdir(abi_home)
    assert engine.target("someowner/tiny-owned.gguf").lane == "tiny-owned"
    with pytest.raises(ModelNotFound):
        engine.target("nobody/nothing")
