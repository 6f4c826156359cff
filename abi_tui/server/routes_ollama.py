"""Ollama's HTTP API (`/api/chat`, `/api/generate`, `/api/tags`, ...) so that Ollama's own
clients work against abi unchanged. Generation goes through the same path as the OpenAI routes
(persona hook, `engine.open()`, the scheduler); answers stream as NDJSON, one JSON object a line,
and errors are Ollama's `{"error": "..."}`. docs/OLLAMA.md has the mapping.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from abi_tui.backends.engine import Stream, new_request_id
from abi_tui.backends.tool_calls import ToolCallParser, split_answer
from abi_tui.errors import AbiError, InvalidRequest
from abi_tui.server import ollama_format as fmt
from abi_tui.server import openapi, openapi_ollama
from abi_tui.server.parse import embedding_texts, read_json
from abi_tui.server.routes_stream import open_stream_for
from abi_tui.server.sse import dumps
from abi_tui.server.state import STATE, ServerState, state_of
from abi_tui.server.streaming import collect, pump

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
ROUTES = frozenset({"/api/tags", "/api/show", "/api/ps", "/api/version", "/api/chat", "/api/generate",
                    "/api/embed", "/api/embeddings"})
# Ollama routes abi does not serve, and where to go instead (a 404 in Ollama's shape).
NOT_SERVED = {
    "/api/pull": "download models with `abi pull` or POST /api/models/pull",
    "/api/delete": "remove models with `abi rm` or DELETE /api/models/{name}",
    "/api/push": "abi does not publish models", "/api/create": "abi loads GGUF files as they are",
    "/api/copy": "abi names models by their files",
}
KEEP_ALIVE = "ollama_keep_alive"
# Backends that follow a schema's grammar; "fixed" is a persona's refusal, which is its own text.
GRAMMAR_BACKENDS = ("llama", "fixed")


class ModelInUse(AbiError):
    status = 409
    code = "model_in_use"


# ----------------------------------------------------------------------------- errors
def _is_ollama_path(path: str) -> bool:
    return path in ROUTES or path in NOT_SERVED or path.startswith("/api/blobs/")


@web.middleware
async def ollama_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Outermost: on Ollama's paths, abi's error object (from the guard, auth, a handler or the
    router) becomes Ollama's `{"error": message}` with the same status and headers."""
    response = await handler(request)
    if (not _is_ollama_path(request.path) or response.status < 400 or not isinstance(response, web.Response)
            or response.content_type != "application/json" or response.body is None):
        return response
    try:
        error = json.loads(bytes(response.body))["error"]
        message = error["message"] if isinstance(error, dict) else str(error)
    except (ValueError, KeyError, TypeError):
        return response
    if response.status == 404 and request.path not in ROUTES:
        where = NOT_SERVED.get(request.path, "abi stores models as GGUF files, not blobs")
        message = f"{request.path} is Ollama's, and abi does not serve it: {where}"
    headers = {k: v for k, v in response.headers.items() if k.lower() in ("allow", "retry-after", "x-request-id")}
    return web.json_response({"error": message}, status=response.status, headers=headers)


# ----------------------------------------------------------------------------- keep_alive
class KeepAlive:
    """Per-model unload timers from Ollama's `keep_alive` (docs/OLLAMA.md): a time counts from
    the end of the request that set it; the active model (pinned) is never unloaded by it."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.expires: dict[str, float] = {}  # model -> wall-clock time of its unload

    def after(self, name: str, seconds: float | None) -> None:
        pool = self.state.engine.pool
        if seconds is None or name not in pool.resident:
            return
        self.cancel(name)
        if pool.resident[name].pinned or math.isinf(seconds):
            return
        self.expires[name] = time.time() + seconds
        loop = asyncio.get_running_loop()
        self.timers[name] = loop.call_later(seconds, lambda: loop.create_task(self.expire(name)))

    def cancel(self, name: str) -> None:
        timer = self.timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        self.expires.pop(name, None)

    async def expire(self, name: str) -> None:
        self.timers.pop(name, None)
        self.expires.pop(name, None)
        pool = self.state.engine.pool
        entry = pool.resident.get(name)
        # In use: the request running now decides when it ends (its own keep_alive, or none).
        if entry is not None and not entry.pinned and not pool.is_busy(name):
            await pool.unload(name, reason="keep_alive")

    def close(self) -> None:
        for name in list(self.timers):
            self.cancel(name)


def keep_alive_of(state: ServerState) -> KeepAlive:
    return state.services[KEEP_ALIVE]


# ----------------------------------------------------------------------------- models
def _digest(path: Path, size: int, known: list[str | None] | None) -> str:
    """The file's sha256 when the cache recorded it; else a sha256 of its path, size and
    modification time (an identity that changes with the file, not a hash of its bytes)."""
    for value in known or []:
        if value:
            return value
    stat = path.stat()
    return hashlib.sha256(f"{path}\0{size}\0{stat.st_mtime_ns}".encode()).hexdigest()


@functools.lru_cache(maxsize=64)
def _summary(path: str, mtime_ns: int) -> dict[str, Any] | None:
    from abi_tui.models.gguf_info import read_summary

    try:
        return read_summary(Path(path)).to_dict()
    except AbiError:
        return None


def _details(summary: dict[str, Any] | None) -> dict[str, Any]:
    summary = summary or {}
    family = summary.get("architecture") or ""
    return {"parent_model": "", "format": "gguf", "family": family, "families": [family] if family else None,
            "parameter_size": fmt.parameter_size(summary), "quantization_level": summary.get("quantization") or ""}


def _entry(name: str, path: Path, size: int, summary: dict[str, Any] | None,
           sha256: list[str | None] | None = None) -> dict[str, Any]:
    stat = path.stat()
    return {"name": name, "model": name, "modified_at": fmt.iso_from_epoch(stat.st_mtime), "size": size,
            "digest": _digest(path, size, sha256), "details": _details(summary)}


def _file_entry(name: str, path: Path) -> dict[str, Any]:
    stat = path.stat()
    return _entry(name, path, stat.st_size, _summary(str(path), stat.st_mtime_ns))


def _list_local(state: ServerState) -> list[dict[str, Any]]:
    """Blocking: every model file abi can load, then resident ones the cache does not list
    (a model started from a path)."""
    models, seen = [], set()
    for item in state.local_models():
        path = Path(item["path"])
        try:
            models.append(_entry(item["name"], path, item.get("size") or path.stat().st_size,
                                 item.get("gguf"), item.get("sha256")))
        except OSError:
            continue  # removed while listing
        seen.add(item["name"])
        seen.add(str(path))
    for name, entry in list(state.engine.pool.resident.items()):
        path = entry.backend.path
        if name not in seen and str(path) not in seen:
            models.append(_file_entry(name, path))
    return models


async def tags(request: web.Request) -> web.Response:
    state = state_of(request)
    return web.json_response({"models": await asyncio.to_thread(_list_local, state)})


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": state_of(request).version})


def _model_info(path: Path, summary: dict[str, Any] | None) -> tuple[dict[str, Any], str, str]:
    """(model_info, template, license) from the GGUF header; long arrays (the vocabulary) are
    left out, as Ollama does unless asked for them."""
    from abi_tui.models.gguf_header import read_header

    header = read_header(path)
    info: dict[str, Any] = {}
    for key, value in header.metadata.items():
        if key == "tokenizer.chat_template":
            continue
        if isinstance(value, dict) or (isinstance(value, list) and len(value) > 64):
            continue  # the header reader keeps only the length of a long array
        info[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if summary and summary.get("parameters"):
        info["general.parameter_count"] = summary["parameters"]
    license_ = header.metadata.get("general.license")
    return info, str(header.metadata.get("tokenizer.chat_template") or ""), str(license_ or "")


async def show(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json(request, state.settings.server.max_body_bytes)
    if body.get("model") is None and isinstance(body.get("name"), str):
        body["model"] = body["name"]  # older clients send "name"
    fmt.flag(body, "verbose")  # long arrays are left out either way
    name, path = state.engine.resolve_path(fmt.strip_latest(fmt.model_name(body)))

    def describe() -> dict[str, Any]:
        entry = _file_entry(name, path)
        summary = _summary(str(path), path.stat().st_mtime_ns)
        info, template, license_ = _model_info(path, summary)
        return {"modelfile": f"# abi serves this GGUF file as it is\nFROM {path}\n",
                "parameters": f"num_ctx {state.settings.server.n_ctx}", "template": template,
                "license": license_, "details": entry["details"], "model_info": info,
                "modified_at": entry["modified_at"], "capabilities": ["completion", "tools"]}

    return web.json_response(await asyncio.to_thread(describe))


async def ps(request: web.Request) -> web.Response:
    state = state_of(request)
    pool = state.engine.pool
    expires = keep_alive_of(state).expires
    gpu = state.settings.server.n_gpu_layers != 0 and _gpu_offload()

    def running() -> list[dict[str, Any]]:
        models = []
        for name, entry in list(pool.resident.items()):
            backend = entry.backend
            item = _file_entry(name, backend.path)
            size = backend.memory.total
            item.update(size=size, size_vram=size if gpu else 0, context_length=backend.n_ctx_seq,
                        expires_at=fmt.iso_from_epoch(expires[name]) if name in expires else None)
            models.append(item)
        return models

    return web.json_response({"models": await asyncio.to_thread(running)})


def _gpu_offload() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


# ----------------------------------------------------------------------------- generation
class Lines:
    """One NDJSON line per text piece, then the final line with Ollama's counters. A piece's
    line is a constant head and tail around its JSON text, built once per wake-up. When tools
    were offered, the text goes through the tool-call parser: each call is sent whole, in a line
    of its own, once the model has moved past it (Ollama's clients read a call's arguments as
    one object, never in fragments)."""

    def __init__(self, name: str, opened_at: float, field: str) -> None:
        self.name = name
        self.opened_at = opened_at
        self.field = field  # "message" (chat) or "response" (generate)
        self.parser: ToolCallParser | None = None
        self._sent_calls = 0

    def _content(self, text: str) -> dict[str, Any]:
        if self.field == "message":
            return {"message": {"role": "assistant", "content": text}}
        return {"response": text}

    def _line(self, content: dict[str, Any], done: bool = False) -> bytes:
        return dumps({"model": self.name, "created_at": fmt.now_iso(), **content, "done": done}).encode() + b"\n"

    def tokens(self, stream: Stream, pieces: list[str]) -> bytes:
        if self.parser is not None:
            return self._events(self.parser.feed("".join(pieces)), finished=False)
        marker = "\x00TEXT\x00"
        line = dumps({"model": self.name, "created_at": fmt.now_iso(), **self._content(marker), "done": False})
        head, _, tail = line.partition(dumps(marker))
        head_b, tail_b = head.encode(), tail.encode() + b"\n"
        return b"".join(head_b + dumps(p).encode() + tail_b for p in pieces)

    def _events(self, events: list[tuple], finished: bool) -> bytes:
        assert self.parser is not None
        out = [self._line(self._content(e[1])) for e in events if e[0] == "text" and e[1]]
        calls = self.parser.calls
        done = len(calls) if finished else max(len(calls) - 1, 0)  # the last may still grow
        if done > self._sent_calls:
            ready, self._sent_calls = calls[self._sent_calls:done], done
            out.append(self._line({"message": {"role": "assistant", "content": "",
                                               "tool_calls": fmt.ollama_tool_calls(ready)}}))
        return b"".join(out)

    def final(self, stream: Stream, text: str = "") -> dict[str, Any]:
        end = stream.ended_at or time.perf_counter()
        first = stream.channel.first_token_at
        started = stream.started_at or end
        reason = stream.finish_reason if stream.finish_reason in ("stop", "length") else "stop"
        content = self._content(text)
        tool_format = stream.prepared.tool_format
        if text and self.field == "message" and tool_format is not None:
            answer, calls = split_answer(text, tool_format)
            content = self._content(answer)
            if calls:
                content["message"]["tool_calls"] = fmt.ollama_tool_calls(calls)
        ns = 1_000_000_000
        return {"model": self.name, "created_at": fmt.now_iso(), **content, "done": True,
                "done_reason": reason,
                "total_duration": int((end - self.opened_at) * ns),
                "load_duration": int((stream.created_at - self.opened_at) * ns),
                "prompt_eval_count": stream.prompt_tokens,
                "prompt_eval_duration": int(((first or end) - started) * ns),
                "eval_count": stream.completion_tokens,
                "eval_duration": int((end - first) * ns) if first else 0}

    def start(self, stream: Stream) -> bytes:
        tool_format = stream.prepared.tool_format
        if self.field == "message" and tool_format is not None:
            self.parser = ToolCallParser(tool_format)
        return b""  # Ollama's stream opens with the first piece

    def end(self, stream: Stream) -> bytes:
        head = self._events(self.parser.finish(), finished=True) if self.parser is not None else b""
        return head + dumps(self.final(stream)).encode() + b"\n"

    def error(self, stream: Stream, error: AbiError) -> bytes:
        return dumps({"error": error.message}).encode() + b"\n"


async def pump_ndjson(request: web.Request, stream: Stream, lines: Lines) -> web.StreamResponse:
    async def open_response() -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no",
                                               "X-Request-Id": stream.request.request_id})
        response.enable_chunked_encoding()
        await response.prepare(request)
        return response

    return await pump(request, stream, lines, open_response, heartbeat=None)


async def _generate(request: web.Request, body: dict[str, Any], name: str,
                    messages: list[dict[str, Any]] | None, prompt: str | None, field: str,
                    route: str, tools: list[dict[str, Any]] | None = None) -> web.StreamResponse:
    state = state_of(request)
    keep = fmt.keep_alive_seconds(body.get("keep_alive"))
    sampling = fmt.sampling(body)
    streaming = fmt.stream_flag(body)
    generation = fmt.generation_request(name, messages, prompt, sampling.params, route, tools)
    generation.request_id = new_request_id("ollama")
    opened_at = time.perf_counter()
    # The persona hook reads which sampling options the client set (a persona's own apply otherwise).
    stream, _ = await open_stream_for(state, generation, {"persona": None, **sampling.given})
    if sampling.params.json_schema is not None and stream.backend.kind not in GRAMMAR_BACKENDS:
        stream.cancel()
        raise InvalidRequest(f"'format' as a JSON schema needs a local llama.cpp model; {stream.model} is "
                             f"a {stream.backend.kind} model (\"json\" works there as on /v1)", param="format")
    lines = Lines(name, opened_at, field)
    try:
        if streaming:
            return await pump_ndjson(request, stream, lines)
        text = await collect(stream)
        if stream.error is not None:
            raise stream.error
        return web.json_response(lines.final(stream, text), headers={"X-Request-Id": generation.request_id})
    finally:
        keep_alive_of(state).after(stream.model, keep)


async def _load_or_unload(request: web.Request, body: dict[str, Any], name: str, field: str) -> web.Response:
    """A request without messages or prompt: Ollama loads the model, or unloads it when
    `keep_alive` is 0."""
    state = state_of(request)
    keep = fmt.keep_alive_seconds(body.get("keep_alive"))
    streaming = fmt.stream_flag(body)
    fmt.sampling(body)  # still a 400 for bad options
    engine = state.engine
    spec = fmt.strip_latest(name)
    if keep == 0:
        resolved, _ = engine.resolve_path(spec)
        if resolved == engine.active_name:
            raise ModelInUse(f"{resolved} is abi's active model and stays loaded; switch models with "
                             "POST /admin/reload (or the dashboard) instead")
        if engine.pool.is_busy(resolved):
            raise ModelInUse(f"{resolved} is answering requests; unload it when they finish", retry_after=2)
        keep_alive_of(state).cancel(resolved)
        await engine.pool.unload(resolved, reason="keep_alive")
        reason = "unload"
    else:
        target = engine.target(spec)
        backend = await target.get_backend()
        keep_alive_of(state).after(backend.model_id, keep)
        reason = "load"
    content = {"message": {"role": "assistant", "content": ""}} if field == "message" else {"response": ""}
    answer = {"model": name, "created_at": fmt.now_iso(), **content, "done_reason": reason, "done": True}
    if streaming:
        return web.Response(body=dumps(answer).encode() + b"\n", content_type=NDJSON)
    return web.json_response(answer)


async def _generation_request(request: web.Request) -> tuple[dict[str, Any], str]:
    """The body of /api/chat or /api/generate and the model it names, options Ollama has and
    abi does not refused first (a 400 naming them, not a silently different answer)."""
    state = state_of(request)
    body = await read_json(request, state.settings.server.max_body_bytes)
    name = fmt.model_name(body)
    fmt.refuse_unsupported(body)
    return body, name


async def chat(request: web.Request) -> web.StreamResponse:
    body, name = await _generation_request(request)
    tools = fmt.tools(body)
    messages = fmt.chat_messages(body)
    if messages is None:
        return await _load_or_unload(request, body, name, "message")
    return await _generate(request, body, name, messages, None, "message", "ollama_chat", tools)


async def generate(request: web.Request) -> web.StreamResponse:
    body, name = await _generation_request(request)
    prompt = fmt.generate_input(body)
    if prompt.empty:
        return await _load_or_unload(request, body, name, "response")
    return await _generate(request, body, name, prompt.messages, prompt.prompt, "response", "ollama_generate")


# ----------------------------------------------------------------------------- embeddings
async def _embed_texts(state: ServerState, name: str, texts: list[str]
                       ) -> tuple[Any, list[list[float]], int, float]:
    """(backend, vectors, prompt tokens, seconds spent finding or loading the model)."""
    started = time.perf_counter()
    backend = await state.engine.embedding_backend(fmt.strip_latest(name))
    loaded = time.perf_counter() - started
    vectors, tokens = await asyncio.to_thread(backend.embed, texts)
    return backend, vectors, tokens, loaded


def _truncated(vector: list[float], dimensions: int) -> list[float]:
    """The first `dimensions` values, scaled back to unit length."""
    head = vector[:dimensions]
    norm = math.sqrt(sum(v * v for v in head)) or 1.0
    return [v / norm for v in head]


async def embed(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json(request, state.settings.server.max_body_bytes)
    name = fmt.model_name(body)
    texts = embedding_texts(body.get("input"))
    dimensions = body.get("dimensions")
    if isinstance(dimensions, float) and dimensions.is_integer():
        dimensions = int(dimensions)  # JSON's 8.0 is the integer 8
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise InvalidRequest("'dimensions' must be a positive integer", param="dimensions")
    fmt.flag(body, "truncate")  # a text over the context is a 400 either way
    fmt.check_object(body, "options")
    keep = fmt.keep_alive_seconds(body.get("keep_alive"))
    started = time.perf_counter()
    backend, vectors, tokens, load_s = await _embed_texts(state, name, texts)
    if dimensions is not None:
        if vectors and dimensions > len(vectors[0]):
            raise InvalidRequest(f"'dimensions' is over this model's {len(vectors[0])}", param="dimensions")
        vectors = [_truncated(v, dimensions) for v in vectors]
    keep_alive_of(state).after(backend.model_id, keep)
    return web.json_response({"model": name, "embeddings": vectors,
                              "total_duration": int((time.perf_counter() - started) * 1e9),
                              "load_duration": int(load_s * 1e9), "prompt_eval_count": tokens})


async def embeddings(request: web.Request) -> web.Response:
    """The legacy single-prompt route."""
    state = state_of(request)
    body = await read_json(request, state.settings.server.max_body_bytes)
    name = fmt.model_name(body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise InvalidRequest("'prompt' must be a string", param="prompt")
    fmt.check_object(body, "options")
    keep = fmt.keep_alive_seconds(body.get("keep_alive"))
    backend, vectors, _, _ = await _embed_texts(state, name, [prompt])
    keep_alive_of(state).after(backend.model_id, keep)
    return web.json_response({"embedding": vectors[0]})


def setup(app: web.Application) -> None:
    state = app[STATE]
    keep_alive = state.services[KEEP_ALIVE] = KeepAlive(state)

    async def close_timers(_state: ServerState) -> None:
        keep_alive.close()

    state.services.setdefault("cleanup", []).append(close_timers)
    app.middlewares.insert(0, ollama_errors)  # outermost: it reshapes the error middleware's answers
    openapi.OPERATIONS.update(openapi_ollama.OPERATIONS)
    openapi.COMPONENTS["schemas"].update(openapi_ollama.SCHEMAS)
    routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
        "/api/chat": chat, "/api/generate": generate, "/api/show": show, "/api/embed": embed,
        "/api/embeddings": embeddings}
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_get("/api/version", version)

