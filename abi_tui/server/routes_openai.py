"""OpenAI-compatible routes: models, chat completions, completions, embeddings.

Streaming chunks share a prefix and suffix built once per stream: per token only the text is
JSON-encoded.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import struct
import time
from dataclasses import replace
from typing import Any

from aiohttp import web

from abi_tui.backends.base import GenerationRequest
from abi_tui.backends.engine import Stream
from abi_tui.backends.tool_calls import ToolCallParser, split_answer
from abi_tui.errors import AbiError, InvalidRequest
from abi_tui.server.parse import (
    chat_request,
    completion_request,
    embedding_texts,
    read_json,
    stream_flags,
)
from abi_tui.server.routes_stream import open_stream_for
from abi_tui.server.sse import DONE_FRAME, dumps, open_sse, sse_frame
from abi_tui.server.state import state_of
from abi_tui.server.streaming import (
    ClientStalled,
    collect,
    pump_sse,
    write_deadline,
)

MOCK_IDS = ("mock/constant_rate", "mock/variable_rate", "mock/burst", "mock/warmup")


def completion_id(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(12)}"


class _ChunkEncoder:
    """Shared by chat and legacy completions: the wire shapes differ only in the choice body."""

    object_name = ""

    def __init__(self, include_usage: bool, index: int = 0) -> None:
        self.include_usage = include_usage
        self.index = index  # the choice this encoder writes (n > 1: one encoder per choice)
        self.created = int(time.time())
        self._prefix = b""
        self._suffix = b""

    def _frame(self, stream: Stream, choice: dict[str, Any], usage: Any = None) -> bytes:
        chunk: dict[str, Any] = {"id": stream.request.request_id, "object": self.object_name,
                                 "created": self.created, "model": stream.model,
                                 "choices": [choice] if choice else []}
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + dumps(chunk).encode() + b"\n\n"

    def _constant_parts(self, stream: Stream) -> None:
        marker = "\x00TEXT\x00"
        frame = self._frame(stream, self._choice(marker, None)).decode()
        head, _, tail = frame.partition(dumps(marker))
        self._prefix, self._suffix = head.encode(), tail.encode()

    def tokens(self, stream: Stream, pieces: list[str]) -> bytes:
        if not self._prefix:
            self._constant_parts(stream)
        prefix, suffix = self._prefix, self._suffix
        return b"".join(prefix + dumps(p).encode() + suffix for p in pieces)

    def end(self, stream: Stream) -> bytes:
        out = self.finish(stream)
        if self.include_usage:
            out += self._frame(stream, {}, usage=usage_dict(stream))
        return out + DONE_FRAME

    def finish(self, stream: Stream) -> bytes:
        """The choice's last frame (its finish_reason), without usage or [DONE]."""
        reason = stream.finish_reason if stream.finish_reason in ("stop", "length") else "stop"
        return self._frame(stream, self._choice(None, reason))

    def error(self, stream: Stream, error: AbiError) -> bytes:
        return sse_frame(error.to_dict()) + DONE_FRAME

    def _choice(self, text: str | None, finish: str | None) -> dict[str, Any]:
        raise NotImplementedError


class ChatChunks(_ChunkEncoder):
    """Chat chunks. With tool calls or logprobs asked for, one frame per event instead of per
    token: the text goes through the tool-call parser, and new logprobs ride on the frame."""

    object_name = "chat.completion.chunk"

    def __init__(self, include_usage: bool, index: int = 0) -> None:
        super().__init__(include_usage, index)
        self.parser: ToolCallParser | None = None
        self.logprobs = False
        self._sent_logprobs = 0

    def start(self, stream: Stream) -> bytes:
        fmt = stream.prepared.tool_format
        self.parser = ToolCallParser(fmt) if fmt is not None else None
        self.logprobs = stream.request.params.logprobs
        return self._frame(stream, {"index": self.index, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None, "finish_reason": None})

    def _choice(self, text: str | None, finish: str | None) -> dict[str, Any]:
        delta = {"content": text} if text is not None else {}
        return {"index": self.index, "delta": delta, "logprobs": None, "finish_reason": finish}

    def tokens(self, stream: Stream, pieces: list[str]) -> bytes:
        if self.parser is None and not self.logprobs:
            return super().tokens(stream, pieces)
        text = "".join(pieces)
        events = self.parser.feed(text) if self.parser is not None else [("text", text)]
        return self._event_frames(stream, events)

    def _event_frames(self, stream: Stream, events: list[tuple]) -> bytes:
        frames = []
        logprobs = self._new_logprobs(stream)
        for event in events:
            if event[0] == "text":
                if not event[1]:
                    continue
                delta: dict[str, Any] = {"content": event[1]}
            elif event[0] == "call":
                call = event[1]
                delta = {"tool_calls": [{"index": call.index, "id": call.id, "type": "function",
                                         "function": {"name": call.name, "arguments": ""}}]}
            else:
                delta = {"tool_calls": [{"index": event[1].index, "function": {"arguments": event[2]}}]}
            frames.append(self._frame(stream, {"index": self.index, "delta": delta, "logprobs": logprobs,
                                               "finish_reason": None}))
            logprobs = None
        if logprobs is not None:  # tokens that brought no text yet (a held-back tag)
            frames.append(self._frame(stream, {"index": self.index, "delta": {}, "logprobs": logprobs,
                                               "finish_reason": None}))
        return b"".join(frames)

    def _new_logprobs(self, stream: Stream) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        entries = stream.channel.extra.get("logprobs") or []
        new, self._sent_logprobs = entries[self._sent_logprobs:], len(entries)
        return {"content": new} if new else None

    def finish(self, stream: Stream) -> bytes:
        head = b""
        if self.parser is not None:
            head = self._event_frames(stream, self.parser.finish())
        elif self.logprobs:
            head = self._event_frames(stream, [])
        if self.parser is not None and self.parser.calls:
            return head + self._frame(stream, {"index": self.index, "delta": {}, "logprobs": None,
                                               "finish_reason": "tool_calls"})
        return head + super().finish(stream)


class CompletionChunks(_ChunkEncoder):
    object_name = "text_completion"

    def __init__(self, include_usage: bool, index: int = 0) -> None:
        super().__init__(include_usage, index)
        self._sent_logprobs = 0
        self._offset = 0
        self.logprobs = False

    def start(self, stream: Stream) -> bytes:
        self.logprobs = stream.request.params.logprobs
        return b""

    def _choice(self, text: str | None, finish: str | None) -> dict[str, Any]:
        return {"index": self.index, "text": text or "", "logprobs": None, "finish_reason": finish}

    def tokens(self, stream: Stream, pieces: list[str]) -> bytes:
        if not self.logprobs:
            return super().tokens(stream, pieces)
        entries = stream.channel.extra.get("logprobs") or []
        new, self._sent_logprobs = entries[self._sent_logprobs:], len(entries)
        logprobs = completion_logprobs(new, self._offset)
        self._offset += sum(len(e["token"]) for e in new)
        return self._frame(stream, {"index": self.index, "text": "".join(pieces), "logprobs": logprobs,
                                    "finish_reason": None})


def usage_dict(stream: Stream) -> dict[str, int]:
    prompt, completion = stream.prompt_tokens, stream.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_of(stream: Stream) -> str:
    if stream.error is not None:
        raise stream.error
    return stream.finish_reason if stream.finish_reason in ("stop", "length") else "stop"


def chat_logprobs(stream: Stream) -> dict[str, Any] | None:
    if not stream.request.params.logprobs:
        return None
    return {"content": list(stream.channel.extra.get("logprobs") or []), "refusal": None}


def completion_logprobs(entries: list[dict[str, Any]], offset: int = 0) -> dict[str, Any]:
    """The legacy completions shape: parallel lists, top alternatives as {token: logprob}."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}


def chat_message(stream: Stream, text: str) -> tuple[dict[str, Any], str]:
    """The assistant message and the finish reason of a whole answer."""
    finish = finish_of(stream)
    fmt = stream.prepared.tool_format
    if fmt is None:
        return {"role": "assistant", "content": text}, finish
    content, calls = split_answer(text, fmt)
    if not calls:
        return {"role": "assistant", "content": content}, finish
    return {"role": "assistant", "content": content or None,
            "tool_calls": [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                           for c in calls]}, "tool_calls"


async def open_choices(state: Any, generation: GenerationRequest, data: dict[str, Any]
                       ) -> tuple[list[Stream], dict[str, Any] | None]:
    """One stream per choice. They share the prompt: the backend prefills it once and copies its
    cells to the other choices, which then decode in the same batches. A given seed becomes
    seed, seed + 1, ... so that the choices differ."""
    first, routing = await open_stream_for(state, generation, data)
    streams = [first]
    if generation.n > 1 and routing:
        first.cancel()
        raise InvalidRequest("'n' greater than 1 is not supported for persona models", param="n")
    try:
        for i in range(1, generation.n):
            params = replace(generation.params, seed=None if generation.params.seed is None
                             else generation.params.seed + i)
            choice = replace(generation, params=params, request_id=f"{generation.request_id}-{i}")
            streams.append(await state.engine.open(choice))
    except BaseException:
        for stream in streams:
            stream.cancel()
        raise
    return streams, routing


def total_usage(streams: list[Stream]) -> dict[str, int]:
    """The prompt counted once, the completions of every choice added up."""
    prompt = streams[0].prompt_tokens
    completion = sum(s.completion_tokens for s in streams)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def collect_all(streams: list[Stream]) -> list[str]:
    try:
        return list(await asyncio.gather(*(collect(s) for s in streams)))
    finally:
        for stream in streams:
            if not stream.channel.closed:
                stream.cancel()


async def pump_choices(request: web.Request, streams: list[Stream], encoders: list[Any],
                       include_usage: bool) -> web.StreamResponse:
    """Several choices into one SSE response: each choice's frames as its tokens arrive, then
    every finish, one usage chunk and [DONE]."""
    if len(streams) == 1:
        encoders[0].include_usage = include_usage
        return await pump_sse(request, streams[0], encoders[0])
    deadline = write_deadline(request)
    queue: asyncio.Queue = asyncio.Queue()

    async def drain(i: int) -> None:
        try:
            async for item in streams[i].events(None):
                if isinstance(item, list):
                    queue.put_nowait((i, item))
        finally:
            queue.put_nowait((i, None))

    tasks = [asyncio.create_task(drain(i)) for i in range(len(streams))]
    response = web.StreamResponse()
    try:
        response = await open_sse(request, headers={"X-Request-Id": streams[0].request.request_id})
        await deadline.write(response, b"".join(e.start(s) for e, s in zip(encoders, streams)))
        running = len(streams)
        while running:
            i, pieces = await queue.get()
            if pieces is None:
                running -= 1
                continue
            await deadline.write(response, encoders[i].tokens(streams[i], pieces))
        failed = next((s.error for s in streams if s.error is not None), None)
        if failed is not None:
            await deadline.write(response, encoders[0].error(streams[0], failed))
        else:
            tail = b"".join(e.finish(s) for e, s in zip(encoders, streams))
            if include_usage:
                tail += encoders[0]._frame(streams[0], {}, usage=total_usage(streams))
            await deadline.write(response, tail + DONE_FRAME)
        await deadline.write(response, None)
    except (ClientStalled, ConnectionError):
        pass  # the client is gone or stalled: the streams are cancelled below
    finally:
        deadline.close()
        for task in tasks:
            task.cancel()
        for stream in streams:
            if not stream.channel.closed:
                stream.cancel()
    return response


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    data = await read_json(request, state.settings.server.max_body_bytes)
    streaming, include_usage = stream_flags(data)
    generation = chat_request(data, route="chat")
    generation.request_id = completion_id("chatcmpl")
    streams, routing = await open_choices(state, generation, data)
    if streaming:
        return await pump_choices(request, streams, [ChatChunks(False, i) for i in range(len(streams))],
                                  include_usage)
    texts = await collect_all(streams)
    choices = []
    for i, (stream, text) in enumerate(zip(streams, texts)):
        message, finish = chat_message(stream, text)
        choices.append({"index": i, "message": message, "logprobs": chat_logprobs(stream), "finish_reason": finish})
    return web.json_response({
        "id": generation.request_id, "object": "chat.completion", "created": int(time.time()),
        "model": streams[0].model, "choices": choices, "usage": total_usage(streams),
        **({"routing": routing} if routing else {}),
    })


async def completions(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    data = await read_json(request, state.settings.server.max_body_bytes)
    streaming, include_usage = stream_flags(data)
    generation = completion_request(data, route="completions")
    generation.request_id = completion_id("cmpl")
    streams, _ = await open_choices(state, generation, {})
    if streaming:
        return await pump_choices(request, streams, [CompletionChunks(False, i) for i in range(len(streams))],
                                  include_usage)
    texts = await collect_all(streams)
    choices = []
    for i, (stream, text) in enumerate(zip(streams, texts)):
        logprobs = completion_logprobs(stream.channel.extra.get("logprobs") or []) if generation.params.logprobs \
            else None
        choices.append({"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish_of(stream)})
    return web.json_response({
        "id": generation.request_id, "object": "text_completion", "created": int(time.time()),
        "model": streams[0].model, "choices": choices, "usage": total_usage(streams),
    })


async def embeddings(request: web.Request) -> web.Response:
    state = state_of(request)
    data = await read_json(request, state.settings.server.max_body_bytes)
    texts = embedding_texts(data.get("input"))
    encoding = data.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("'model' must be a string", param="model")
    backend = await state.engine.embedding_backend(model)
    vectors, tokens = await asyncio.to_thread(backend.embed, texts)
    items = []
    for i, vector in enumerate(vectors):
        value: Any = vector
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        items.append({"object": "embedding", "index": i, "embedding": value})
    return web.json_response({"object": "list", "data": items, "model": backend.model_id,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def list_models(request: web.Request) -> web.Response:
    state = state_of(request)
    created = int(state.started_wall)
    engine = state.engine
    resident = {m["model"] for m in engine.pool.summary()["models"]}
    data: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(model_id: str, kind: str, **extra: Any) -> None:
        if model_id not in seen:
            seen.add(model_id)
            data.append({"id": model_id, "object": "model", "created": created, "owned_by": "abi",
                         "kind": kind, **extra})

    for entry in await asyncio.to_thread(state.local_models):
        add(entry["name"], "local", loaded=entry["name"] in resident, active=entry["name"] == engine.active_name,
            **{k: entry[k] for k in ("quant", "size", "source") if k in entry})
    for name in resident:
        add(name, "local", loaded=True, active=name == engine.active_name)
    for persona in ("auto", "abi", "abbey", "aviva"):
        add(persona, "persona")
    for remote in await state.remote_models():
        add(remote, "remote")
    for mock in MOCK_IDS:
        add(mock, "mock")
    return web.json_response({"object": "list", "data": data})


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)

