"""Fuzzing (issue 11): schemathesis against /openapi.json — no 5xx, every response matches the
schema, schema-valid requests are accepted and schema-invalid ones refused — and hypothesis on
the SSE and WebSocket encoders and parsers and on the model-spec parser."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException
from models.fakehub import FakeHub
from tiny_gguf import write_tiny_gguf

from abi_tui.errors import AbiError
from abi_tui.models.spec import parse_spec
from abi_tui.server.sse import dumps, parse_sse, sse_frame

from .conftest import knob

pytestmark = pytest.mark.reliability

API_EXAMPLES = knob("api_examples", 12)  # per operation and mode (positive, negative)
PROPERTY_EXAMPLES = knob("property_examples", 200)
TOKEN = "fuzz-token-5b1d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Not plain request/response HTTP: /api/events never ends by design, /api/stream/ws is a
# WebSocket upgrade (a plain GET is a 400). The load, fault and security tests cover both.
ENDLESS = {"/api/events", "/api/stream/ws"}
PROPERTY = settings(max_examples=PROPERTY_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                    database=None)


# ----------------------------------------------------------------------------- schemathesis
@pytest.fixture
def fuzz_server(tmp_path, monkeypatch, tiny_model):
    """The server in its own thread (schemathesis calls are blocking), a fake hub for search and
    pull, the tiny model as the embedding model; generation names the mock (see `_cheap`)."""
    from conftest import free_port

    from abi_tui.config import load_settings
    from abi_tui.server.main import EmbeddedServer

    hub = FakeHub().start()
    data = write_tiny_gguf(tmp_path / "hub.gguf", seed=2, name="hubm").read_bytes()
    hub.add_repo("acme/tiny-GGUF", {"tiny-Q4_K_M.gguf": data})
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings_ = load_settings({"server.token": TOKEN, "server.port": free_port(), "server.threads": 1,
                               "server.n_ctx": 512, "vector_store.embedding_model": str(tiny_model),
                               "server.heartbeat_ms": 0})
    server = EmbeddedServer(settings_)
    url = server.start()
    yield url
    server.stop()
    hub.stop()


GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions", "/api/stream", "/api/v1/chat",
                    "/api/v1/chat/{persona}", "/api/chat", "/api/generate")
OLLAMA_PATHS = ("/api/chat", "/api/generate")


def _cheap(case: Any) -> None:
    """Keep generation short: a schema-valid max_tokens stays valid when lowered. Only whole
    numbers: lowering a fractional one (a negative case) would make it valid, and the server's
    acceptance of it would then count as a failure. Generation names the mock: with no model
    loaded, `default` and the personas are a 503 by design (the mock is never a stand-in)."""
    body = case.body
    if isinstance(body, dict):
        # Ollama's routes require a model: a body without one stays without (a negative case).
        nameless_ok = case.path not in OLLAMA_PATHS
        if case.path in GENERATION_PATHS and ((nameless_ok and body.get("model") is None)
                                              or isinstance(body.get("model"), str)):
            body["model"] = "mock/constant_rate?min_ms=0&max_ms=0"
            if isinstance(body.get("persona"), str):
                del body["persona"]
        if case.path in OLLAMA_PATHS:
            # The mock follows no grammar: a JSON-schema format is a 400 on it (local models only).
            if isinstance(body.get("format"), dict):
                del body["format"]
            options = body.get("options")
            if isinstance(options, dict):
                value = options.get("num_predict")
                if value in (-1, -2) or (isinstance(value, int) and not isinstance(value, bool) and value > 6):
                    options["num_predict"] = 6
        for key in ("max_tokens", "max_completion_tokens"):
            value = body.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 6 \
                    and float(value).is_integer():
                body[key] = 6


def test_schemathesis_finds_no_server_error_and_no_schema_violation(fuzz_server, figures):
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis import checks as st_checks

    checks = [st_checks.not_a_server_error, st_checks.status_code_conformance, st_checks.content_type_conformance,
              st_checks.response_schema_conformance, st_checks.response_headers_conformance,
              st_checks.negative_data_rejection, st_checks.positive_data_acceptance]
    schema = schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json", headers=AUTH)
    counts = {"cases": 0, "operations": 0}
    failures: list[str] = []
    lock = threading.Lock()
    def fuzz(operation: Any, mode: Any, strategy: Any) -> None:
        # A query string with parameters nobody declared is ignored, as HTTP APIs do; schemathesis
        # counts it as invalid data once an operation declares any query parameter.
        query_only = operation.body is None or not len(operation.body)
        used = [c for c in checks if not (query_only and c is st_checks.negative_data_rejection
                                          and any(True for _ in operation.query))]

        @settings(max_examples=API_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None, phases=[Phase.explicit, Phase.generate], derandomize=True)
        @given(case=strategy)
        def run(case: Any) -> None:
            _cheap(case)
            response = case.call(headers=AUTH, timeout=30)
            with lock:
                counts["cases"] += 1
            try:
                case.validate_response(response, checks=used, headers=AUTH)
            except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failures, then fail once
                failures.append(f"{operation.method.upper()} {operation.path} [{mode.value}]: "
                                f"{str(exc).strip()[:800]}")
                raise

        try:
            run()
        except HypothesisException:
            pass  # nothing to generate in this mode (no parameters to break)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
            if not failures or operation.path not in failures[-1]:
                failures.append(f"{operation.method.upper()} {operation.path} [{mode.value}]: {exc!r}"[:800])

    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in ENDLESS:
            continue
        counts["operations"] += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                strategy = operation.as_strategy(generation_mode=mode)
            except (HypothesisException, AbiError, ValueError):
                continue
            fuzz(operation, mode, strategy)
    figures.set(fuzz_cases=counts["cases"], operations=counts["operations"], failures=len(failures))
    assert not failures, "\n\n".join(failures)
    assert counts["operations"] >= 25 and counts["cases"] >= counts["operations"] * 2


# ----------------------------------------------------------------------------- SSE
EVENT_NAME = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\r\n:"), min_size=1,
                     max_size=20).filter(lambda s: s == s.strip())
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


@PROPERTY
@given(events=st.lists(st.tuples(JSON_VALUES, st.none() | EVENT_NAME, st.none() | st.integers(0, 2**31)),
                       min_size=1, max_size=5), comment=st.booleans())
def test_sse_frames_parse_back_to_what_was_sent(events, comment, figures):
    stream = b"".join(sse_frame(data, event=name, event_id=ident) for data, name, ident in events)
    if comment:
        stream = b": heartbeat\n\n" + stream
    parsed = [e for e in parse_sse(stream.decode("utf-8")) if "comment" not in e]
    assert len(parsed) == len(events)
    for (data, name, ident), got in zip(events, parsed, strict=True):
        if isinstance(data, str):  # a string is sent as it is, line breaks becoming data: lines
            assert got["data"] == data.replace("\r\n", "\n").replace("\r", "\n")
        else:
            assert json.loads(got["data"]) == data
        assert got.get("event") == name
        assert got.get("id") == (None if ident is None else str(ident))
    figures.count("property_cases")


@PROPERTY
@given(text=st.text(), lines=st.lists(st.text(st.characters(blacklist_categories=("Cs",))), max_size=5))
def test_sse_data_with_any_newlines_stays_one_event(text, lines, figures):
    data = "\n".join([text, *lines]).replace("\r", "")  # SSE has no way to carry a bare CR
    parsed = [e for e in parse_sse(sse_frame(data).decode("utf-8", "surrogatepass")) if "comment" not in e]
    assert len(parsed) == 1 and parsed[0]["data"] == data
    figures.count("property_cases")


@PROPERTY
@given(pieces=st.lists(st.text(st.characters(blacklist_categories=("Cs",))), min_size=1, max_size=8))
def test_token_encoders_carry_any_text(pieces, figures):
    """The hand-built per-token frames (ABI SSE, OpenAI chunks) and WebSocket messages decode
    to exactly the text generated, whatever it holds."""
    from types import SimpleNamespace

    from abi_tui.server.routes_openai import ChatChunks, CompletionChunks
    from abi_tui.server.routes_stream import AbiSseEncoder

    stream = SimpleNamespace(request=SimpleNamespace(request_id="chatcmpl-x"), model="m\"o\ndel")
    abi = AbiSseEncoder(None).tokens(stream, pieces).decode()
    got = [json.loads(e["data"]) for e in parse_sse(abi)]
    assert [g["text"] for g in got] == pieces and [g["index"] for g in got] == list(range(len(pieces)))
    for encoder, field in ((ChatChunks(False), "delta"), (CompletionChunks(False), None)):
        frames = [json.loads(e["data"]) for e in parse_sse(encoder.tokens(stream, pieces).decode())]
        texts = [f["choices"][0]["delta"]["content"] if field else f["choices"][0]["text"] for f in frames]
        assert texts == pieces and all(f["model"] == stream.model for f in frames)
    for piece in pieces:  # the WebSocket sends dumps() of each message as one text frame
        message = {"type": "token", "request_id": "r", "text": piece, "index": 0}
        assert json.loads(dumps(message).encode("utf-8").decode("utf-8")) == message
    figures.count("property_cases")


# ----------------------------------------------------------------------------- request parsers
BODIES = st.dictionaries(
    st.sampled_from(["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
                     "top_k", "min_p", "stop", "seed", "presence_penalty", "frequency_penalty", "repeat_penalty",
                     "logit_bias", "response_format", "n", "stream", "stream_options", "tools", "logprobs",
                     "persona", "request_id", "suffix", "echo", "best_of", "type"]),
    JSON_VALUES | st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool",
                                                                          "x"]),
                                                  "content": JSON_VALUES}), max_size=3),
    max_size=8)


@PROPERTY
@given(body=BODIES)
def test_request_parsers_accept_or_refuse_with_a_400_naming_the_field(body, figures):
    """Every body the SSE routes, the WebSocket and the OpenAI routes parse either becomes a
    request or is refused with an InvalidRequest, never another exception."""
    from abi_tui.server.parse import chat_request, completion_request, stream_flags
    from abi_tui.server.routes_stream import generation_request

    for parse in (lambda b: generation_request(b, "abi"), lambda b: chat_request(b, "chat"),
                  lambda b: completion_request(b, "completions"), stream_flags):
        try:
            parse(dict(body))
        except AbiError as exc:
            assert exc.status == 400 and exc.message
    figures.count("property_cases")


@PROPERTY
@given(text=st.text(max_size=300))
def test_websocket_messages_get_an_answer_and_never_break_the_session(text, figures):
    """Arbitrary text frames: a malformed one gets an error message; nothing raises."""
    import asyncio

    from abi_tui.config import Settings
    from abi_tui.server.routes_stream import WsSession

    class FakeWs:
        closed = False

        def __init__(self) -> None:
            self.sent: list[str] = []

        async def send_str(self, data: str) -> None:
            data.encode("utf-8")  # what aiohttp does: must not fail
            self.sent.append(data)

    async def main() -> None:
        ws = FakeWs()
        state = SimpleNamespace(settings=Settings(home=Path("/nonexistent")))  # what handle_text reads
        session = WsSession(state=state, ws=ws, heartbeat=None)  # type: ignore[arg-type]
        session.run = lambda body, request_id: asyncio.sleep(0)  # type: ignore[method-assign]
        await session.handle_text(text)
        await session.close()
        for sent in ws.sent:
            assert json.loads(sent)["type"] == "error"

    asyncio.run(main())
    figures.count("property_cases")


# ----------------------------------------------------------------------------- the JSON reader
# Strings full of what the depth scan must not count: brackets, quotes, backslashes, escapes.
TRICKY_TEXT = st.text(st.sampled_from(list('[]{}"\\/ab\n\u00e9\u2028\U0001f600')), max_size=12)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TRICKY_TEXT


@st.composite
def nested_values(draw: st.DrawFn) -> tuple[Any, int]:
    """(a JSON value, its exact depth): a chain of arrays and objects around a leaf, each level
    with scalar siblings, depth drawn around the limit."""
    from abi_tui.server.parse import MAX_JSON_DEPTH

    depth = draw(st.integers(MAX_JSON_DEPTH - 8, MAX_JSON_DEPTH + 8))
    value: Any = draw(st.sampled_from([[], {}]))  # the innermost container: level `depth`
    for _ in range(depth - 1):
        siblings = draw(st.lists(SCALARS, max_size=2))
        if draw(st.booleans()):
            at = draw(st.integers(0, len(siblings)))
            value = [*siblings[:at], value, *siblings[at:]]
        else:
            value = {**{f"k{i}": v for i, v in enumerate(siblings)}, draw(TRICKY_TEXT): value}
    return value, depth


@PROPERTY
@given(case=nested_values(), slack=st.integers(-3, 3), pad=st.integers(0, 3000))
def test_the_json_reader_enforces_depth_and_size_at_their_limits(case, slack, pad, figures):
    """Depth near 64 and size near the byte limit: accepted exactly when both are within the
    limits, and then equal to what json.loads reads; otherwise the error names the limit."""
    from abi_tui.server.parse import MAX_JSON_DEPTH, loads_json

    value, depth = case
    raw = json.dumps({"pad": "[" * pad, "v": value}, ensure_ascii=bool(pad % 2)).encode()  # the body is one level
    limit = len(raw) + slack
    try:
        got = loads_json(raw, limit)
    except AbiError as exc:
        if len(raw) > limit:
            assert exc.status == 413 and "limit" in exc.message
        else:
            assert depth + 1 > MAX_JSON_DEPTH, (depth, exc.message)
            assert exc.status == 400 and exc.code == "json_too_deep" and str(MAX_JSON_DEPTH) in exc.message
        figures.count("property_cases")
        return
    assert len(raw) <= limit and depth + 1 <= MAX_JSON_DEPTH
    assert got == json.loads(raw)
    figures.count("property_cases")


@PROPERTY
@given(raw=st.binary(max_size=400) | st.text(st.sampled_from(list('[]{}",:1 \\ax')), max_size=400).map(str.encode)
       | st.integers(60, 200).map(lambda n: b"[" * n + b"]" * n))
def test_the_json_reader_refuses_anything_else_with_a_4xx(raw, figures):
    """Any bytes: a value json.loads agrees with, or a 400/413 with a message; never another
    exception (RecursionError above all)."""
    from abi_tui.server.parse import loads_json

    try:
        got = loads_json(raw, 1024 * 1024)
    except AbiError as exc:
        assert exc.status in (400, 413) and exc.message
    else:
        assert got == json.loads(raw)
    figures.count("property_cases")


# ----------------------------------------------------------------------------- model specs
PART = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,12}", fullmatch=True)


@PROPERTY
@given(text=st.text(max_size=200) | st.builds(lambda a, b, c: f"{a}/{b}{c}", PART, PART,
                                             st.sampled_from(["", ":Q4_K_M", "/f.gguf", "@main/x/y.gguf", ":"])))
def test_the_model_spec_parser_classifies_or_refuses_anything(text, figures):
    try:
        spec = parse_spec(text, endpoint="https://hub.example")
    except AbiError as exc:
        assert exc.status == 400 and exc.param in ("model", "quant")
        figures.count("property_cases")
        return
    assert spec.kind in ("hub", "url", "path", "name")
    if spec.kind == "hub":
        assert spec.repo and spec.repo.count("/") == 1 and ".." not in (spec.filename or "").split("/")
        again = parse_spec(spec.canonical, endpoint="https://hub.example")
        assert (again.kind, again.repo, again.filename, again.quant) == (spec.kind, spec.repo, spec.filename,
                                                                          spec.quant)
    figures.count("property_cases")
