"""Fake model providers on 127.0.0.1 that speak each provider's documented wire format.

- FakeOpenAI: POST /v1/chat/completions and /v1/completions (SSE `data:` chunks, a usage chunk
  when `stream_options.include_usage`, `data: [DONE]`), GET /v1/models, errors as
  `{"error": {"message", "type", "param", "code"}}`.
- FakeOllama: POST /api/chat and /api/generate (NDJSON lines, the last with `done: true`,
  `done_reason`, `prompt_eval_count`, `eval_count`), GET /api/tags, errors as `{"error": "..."}`.
- FakeAnthropic: POST /v1/messages (SSE events message_start, content_block_start, ping,
  content_block_delta, content_block_stop, message_delta, message_stop, `error`), GET
  /v1/models, errors as `{"type": "error", "error": {"type", "message"}}`; checks x-api-key
  and anthropic-version.

Each runs on its own event loop in a thread (async tests, blocking clients and `abi`
subprocesses can all use it) and is scripted through `Script`: delays, a stall before the
first token, an error status (for every request or the first N), a connection dropped after
N tokens, an error event mid-stream. It counts requests and records every client that went
away before its answer ended.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Script:
    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " remote", " world", "!"])
    first_token_delay_s: float = 0.0
    token_delay_s: float = 0.0
    stall_s: float = 0.0                   # silence after the headers, before the first token
    keepalive_s: float = 0.0               # during the stall, a keep-alive (comment, ping) this often
    thinking: list[str] = field(default_factory=list)  # reasoning deltas before the answer
    error_status: int | None = None
    error_message: str = "the fake provider is having a bad day"
    error_type: str | None = None          # provider-specific; a default per status otherwise
    error_code: str | None = None
    fail_first: int | None = None          # the error hits only the first N requests (None: all)
    retry_after: str | None = None
    finish: str | None = None              # the provider's own reason; natural one otherwise
    prompt_tokens: int = 17
    completion_tokens: int | None = None   # reported; default: tokens sent
    drop_after: int | None = None          # close the connection after N tokens
    stream_error_after: int | None = None  # an error event after N tokens
    models: list[str] = field(default_factory=lambda: ["fake-small", "fake-large"])
    list_stall_s: float = 0.0              # the model listing answers this late


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


class FakeProvider:
    """The shared machinery; subclasses add routes and the wire format."""

    name = "fake"

    def __init__(self, script: Script | None = None, api_key: str | None = None) -> None:
        self.script = script or Script()
        self.api_key = api_key
        self.requests: list[Recorded] = []
        self.generations = 0        # generation requests seen
        self.completed = 0          # answers that ran to their end
        self.disconnects = 0        # clients that left before the end of their answer
        self.disconnected = threading.Event()
        self.list_requests = 0
        self.url = ""
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> FakeProvider:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-{self.name}", daemon=True)
        self._thread.start()
        assert ready.wait(10), f"fake {self.name} did not start"
        return self

    async def _start(self) -> None:
        app = web.Application()
        self.routes(app)
        # handler_cancellation: a client that goes away cancels its handler, which records it.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._loop is None or self._runner is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        try:
            future.result(10)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- for tests ----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return self.url

    def bodies(self, path: str | None = None) -> list[Any]:
        with self._lock:
            return [r.body for r in self.requests if path is None or r.path == path]

    async def wait_disconnect(self, timeout: float) -> float | None:
        """Seconds until a client disconnect was recorded, or None after `timeout`."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.disconnected.is_set():
                return time.monotonic() - started
            await asyncio.sleep(0.01)
        return None

    # -- subclasses -----------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def error_body(self, status: int, script: Script) -> dict[str, Any]:
        raise NotImplementedError

    def check_auth(self, request: web.Request) -> web.Response | None:
        return None

    def limit(self, body: dict[str, Any]) -> int | None:
        raise NotImplementedError

    async def begin(self, response: web.StreamResponse, body: dict[str, Any], path: str) -> None:
        """Headers are sent; whatever precedes the first token."""

    async def token(self, response: web.StreamResponse, body: dict[str, Any], path: str, text: str) -> None:
        raise NotImplementedError

    async def end(self, response: web.StreamResponse, body: dict[str, Any], path: str, finish: str,
                  usage: tuple[int, int]) -> None:
        raise NotImplementedError

    async def stream_error(self, response: web.StreamResponse, script: Script) -> None:
        raise NotImplementedError

    finish_reasons = ("stop", "length")  # (natural end, limit reached) in the provider's words
    content_type = "text/event-stream"

    # -- shared handlers ------------------------------------------------------------------------
    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        with self._lock:
            self.requests.append(Recorded(request.path, dict(request.headers), body))
            self.generations += 1
            number = self.generations
        refused = self.check_auth(request)
        if refused is not None:
            return refused
        script = self.script
        if script.error_status is not None and (script.fail_first is None or number <= script.fail_first):
            headers = {"Retry-After": script.retry_after} if script.retry_after else {}
            return web.json_response(self.error_body(script.error_status, script), status=script.error_status,
                                     headers=headers)
        if body.get("stream") is not True:
            return web.json_response(self.error_body(400, Script(error_message="this fake only streams")),
                                     status=400)
        tokens = list(script.tokens)
        limit = self.limit(body)
        finish = script.finish or self.finish_reasons[0]
        if limit is not None and limit < len(tokens):
            tokens, finish = tokens[:limit], script.finish or self.finish_reasons[1]
        response = web.StreamResponse(headers={"Content-Type": self.content_type})
        await response.prepare(request)
        try:
            await self.begin(response, body, request.path)
            if script.stall_s:
                await self._stall(response, script)
            await asyncio.sleep(script.first_token_delay_s)
            for text in script.thinking:
                await self.thinking(response, body, request.path, text)
                await asyncio.sleep(script.token_delay_s)
            for index, text in enumerate(tokens):
                if index == script.drop_after:
                    assert request.transport is not None
                    request.transport.close()  # mid-body: the client sees a broken stream
                    return response
                if index == script.stream_error_after:
                    await self.stream_error(response, script)
                    await response.write_eof()
                    return response
                if index and script.token_delay_s:
                    await asyncio.sleep(script.token_delay_s)
                await self.token(response, body, request.path, text)
            completion = script.completion_tokens if script.completion_tokens is not None else len(tokens)
            await self.end(response, body, request.path, finish, (script.prompt_tokens, completion))
            await response.write_eof()
            with self._lock:
                self.completed += 1
        except (asyncio.CancelledError, ConnectionResetError):
            with self._lock:
                self.disconnects += 1
            self.disconnected.set()
            raise
        return response

    async def _stall(self, response: web.StreamResponse, script: Script) -> None:
        if not script.keepalive_s:
            await asyncio.sleep(script.stall_s)
            return
        until = time.monotonic() + script.stall_s
        while time.monotonic() < until:
            await asyncio.sleep(script.keepalive_s)
            await self.keepalive(response)

    async def keepalive(self, response: web.StreamResponse) -> None:
        await response.write(b": keep-alive\n\n")

    async def thinking(self, response: web.StreamResponse, body: dict[str, Any], path: str, text: str) -> None:
        raise NotImplementedError

    async def list_models(self, request: web.Request) -> web.Response:
        with self._lock:
            self.list_requests += 1
        refused = self.check_auth(request)
        if refused is not None:
            return refused
        if self.script.list_stall_s:
            await asyncio.sleep(self.script.list_stall_s)
        return web.json_response(self.model_list(self.script.models))

    def model_list(self, models: list[str]) -> dict[str, Any]:
        raise NotImplementedError


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + (data if isinstance(data, str) else json.dumps(data)) + "\n\n").encode()


class FakeOpenAI(FakeProvider):
    name = "openai"
    OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                          429: "requests", 500: "server_error", 503: "server_error"}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_post("/v1/completions", self.generate)
        app.router.add_get("/v1/models", self.list_models)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def check_auth(self, request: web.Request) -> web.Response | None:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "Incorrect API key provided: sk-wrong.",
                                                "type": "invalid_request_error", "param": None,
                                                "code": "invalid_api_key"}}, status=401)
        return None

    def error_body(self, status: int, script: Script) -> dict[str, Any]:
        return {"error": {"message": script.error_message,
                          "type": script.error_type or self.OPENAI_ERROR_TYPES.get(status, "server_error"),
                          "param": None, "code": script.error_code}}

    def limit(self, body: dict[str, Any]) -> int | None:
        return body.get("max_completion_tokens") or body.get("max_tokens")

    def _chunk(self, body: dict[str, Any], path: str, choice: dict[str, Any] | None, usage: Any = None) -> bytes:
        chat = path.endswith("/chat/completions")
        chunk: dict[str, Any] = {"id": "chatcmpl-fake" if chat else "cmpl-fake",
                                 "object": "chat.completion.chunk" if chat else "text_completion",
                                 "created": 1_700_000_000, "model": body["model"],
                                 "choices": [choice] if choice is not None else []}
        if usage is not None or (body.get("stream_options") or {}).get("include_usage"):
            chunk["usage"] = usage
        return _sse(chunk)

    async def begin(self, response: web.StreamResponse, body: dict[str, Any], path: str) -> None:
        if path.endswith("/chat/completions"):  # the role chunk comes at once: it is not a token
            await response.write(self._chunk(body, path, {"index": 0, "delta": {"role": "assistant", "content": ""},
                                                          "finish_reason": None}))

    async def thinking(self, response: web.StreamResponse, body: dict[str, Any], path: str, text: str) -> None:
        # As vLLM and DeepSeek stream reasoning: apart from the answer's content.
        await response.write(self._chunk(body, path, {"index": 0, "delta": {"reasoning_content": text},
                                                      "finish_reason": None}))

    async def token(self, response: web.StreamResponse, body: dict[str, Any], path: str, text: str) -> None:
        if path.endswith("/chat/completions"):
            choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": None}
        await response.write(self._chunk(body, path, choice))

    async def end(self, response: web.StreamResponse, body: dict[str, Any], path: str, finish: str,
                  usage: tuple[int, int]) -> None:
        chat = path.endswith("/chat/completions")
        choice = ({"index": 0, "delta": {}, "finish_reason": finish} if chat
                  else {"index": 0, "text": "", "finish_reason": finish})
        await response.write(self._chunk(body, path, choice))
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt, completion = usage
            await response.write(self._chunk(body, path, None, {"prompt_tokens": prompt,
                                                                "completion_tokens": completion,
                                                                "total_tokens": prompt + completion}))
        await response.write(b"data: [DONE]\n\n")

    async def stream_error(self, response: web.StreamResponse, script: Script) -> None:
        await response.write(_sse(self.error_body(500, script)))

    def model_list(self, models: list[str]) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 1_700_000_000,
                                            "owned_by": "fake"} for m in models]}


class FakeOllama(FakeProvider):
    name = "ollama"
    content_type = "application/x-ndjson"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/chat", self.generate)
        app.router.add_post("/api/generate", self.generate)
        app.router.add_get("/api/tags", self.list_models)

    def error_body(self, status: int, script: Script) -> dict[str, Any]:
        return {"error": script.error_message}

    def limit(self, body: dict[str, Any]) -> int | None:
        return (body.get("options") or {}).get("num_predict")

    def _line(self, body: dict[str, Any], path: str, text: str, **extra: Any) -> bytes:
        line: dict[str, Any] = {"model": body["model"], "created_at": "2025-01-01T00:00:00.000000Z"}
        if path == "/api/chat":
            line["message"] = {"role": "assistant", "content": text}
        else:
            line["response"] = text
        line.update(extra)
        return (json.dumps(line) + "\n").encode()

    async def keepalive(self, response: web.StreamResponse) -> None:
        pass  # NDJSON has no comments: Ollama is silent while it works

    async def thinking(self, response: web.StreamResponse, body: dict[str, Any], path: str, text: str) -> None:
        line = self._line(body, path, "", done=False)
        data = json.loads(line)
        data.setdefault("message", {})["thinking"] = text
        await response.write((json.dumps(data) + "\n").encode())

    async def token(self, response: web.StreamResponse, body: dict[str, Any], path: str, text: str) -> None:
        await response.write(self._line(body, path, text, done=False))

    async def end(self, response: web.StreamResponse, body: dict[str, Any], path: str, finish: str,
                  usage: tuple[int, int]) -> None:
        prompt, completion = usage
        await response.write(self._line(body, path, "", done=True, done_reason=finish, total_duration=123456789,
                                        load_duration=1234567, prompt_eval_count=prompt,
                                        prompt_eval_duration=2345678, eval_count=completion,
                                        eval_duration=98765432))

    async def stream_error(self, response: web.StreamResponse, script: Script) -> None:
        await response.write((json.dumps({"error": script.error_message}) + "\n").encode())

    def model_list(self, models: list[str]) -> dict[str, Any]:
        return {"models": [{"name": m, "model": m, "modified_at": "2025-01-01T00:00:00Z", "size": 1234,
                            "digest": "0" * 64, "details": {"format": "gguf", "family": "llama"}} for m in models]}


OPEN_BLOCK = web.ResponseKey("open_block", object)  # (index, type) of the open content block


class FakeAnthropic(FakeProvider):
    name = "anthropic"
    finish_reasons = ("end_turn", "max_tokens")
    ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                   529: "overloaded_error"}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self.generate)
        app.router.add_get("/v1/models", self.list_models)

    def check_auth(self, request: web.Request) -> web.Response | None:
        if not request.headers.get("anthropic-version"):
            return web.json_response(self._error("invalid_request_error", "anthropic-version: header is required"),
                                     status=400)
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return web.json_response(self._error("authentication_error", "invalid x-api-key"), status=401)
        return None

    def _error(self, kind: str, message: str) -> dict[str, Any]:
        return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"}

    def error_body(self, status: int, script: Script) -> dict[str, Any]:
        return self._error(script.error_type or self.ERROR_TYPES.get(status, "api_error"), script.error_message)

    def limit(self, body: dict[str, Any]) -> int | None:
        return body.get("max_tokens")

    async def begin(self, response: web.StreamResponse, body: dict[str, Any], path: str) -> None:
        script = self.script
        await response.write(_sse({"type": "message_start", "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "content": [], "model": body["model"],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": script.prompt_tokens - 2, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 2, "output_tokens": 1}}}, "message_start"))
        await response.write(_sse({"type": "ping"}, "ping"))
        response[OPEN_BLOCK] = None

    async def _block(self, response: web.StreamResponse, kind: str) -> int:
        """Open a content block of `kind` (closing the previous one); its index."""
        current: Any = response[OPEN_BLOCK]
        if current is not None and current[1] == kind:
            return current[0]
        index = 0
        if current is not None:
            await response.write(_sse({"type": "content_block_stop", "index": current[0]}, "content_block_stop"))
            index = current[0] + 1
        start = {"type": "text", "text": ""} if kind == "text" else {"type": "thinking", "thinking": ""}
        await response.write(_sse({"type": "content_block_start", "index": index, "content_block": start},
                                  "content_block_start"))
        response[OPEN_BLOCK] = (index, kind)
        return index

    async def keepalive(self, response: web.StreamResponse) -> None:
        await response.write(_sse({"type": "ping"}, "ping"))

    async def thinking(self, response: web.StreamResponse, body: dict[str, Any], path: str, text: str) -> None:
        index = await self._block(response, "thinking")
        await response.write(_sse({"type": "content_block_delta", "index": index,
                                   "delta": {"type": "thinking_delta", "thinking": text}}, "content_block_delta"))

    async def token(self, response: web.StreamResponse, body: dict[str, Any], path: str, text: str) -> None:
        index = await self._block(response, "text")
        await response.write(_sse({"type": "content_block_delta", "index": index,
                                   "delta": {"type": "text_delta", "text": text}}, "content_block_delta"))

    async def end(self, response: web.StreamResponse, body: dict[str, Any], path: str, finish: str,
                  usage: tuple[int, int]) -> None:
        current: Any = response[OPEN_BLOCK]
        if current is not None:
            await response.write(_sse({"type": "content_block_stop", "index": current[0]}, "content_block_stop"))
        await response.write(_sse({"type": "message_delta",
                                   "delta": {"stop_reason": finish, "stop_sequence": None},
                                   "usage": {"output_tokens": usage[1]}}, "message_delta"))
        await response.write(_sse({"type": "message_stop"}, "message_stop"))

    async def stream_error(self, response: web.StreamResponse, script: Script) -> None:
        await response.write(_sse(self._error(script.error_type or "overloaded_error", script.error_message), "error"))

    def model_list(self, models: list[str]) -> dict[str, Any]:
        return {"data": [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                         for m in models], "has_more": False, "first_id": models[0] if models else None,
                "last_id": models[-1] if models else None}
