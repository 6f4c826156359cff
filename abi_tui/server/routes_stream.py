"""The ABI streaming protocols: SSE on `POST /api/stream` and WebSocket on
`GET /api/stream/ws`, both over the same engine streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from abi_tui.backends.base import GenerationRequest
from abi_tui.backends.engine import HEARTBEAT, Stream, new_request_id
from abi_tui.errors import AbiError, InvalidRequest
from abi_tui.server import requests
from abi_tui.server.parse import InvalidJson, loads_json, message_dicts, params_from, read_json
from abi_tui.server.sse import dumps, sse_frame
from abi_tui.server.state import ServerState, state_of
from abi_tui.server.streaming import (
    DROP_GRACE_S,
    heartbeat_seconds,
    pump_sse,
    write_timeout_seconds,
)

log = logging.getLogger(__name__)

WS_MAX_MESSAGE = 1024 * 1024
WS_MAX_CONCURRENT = 4
WS_PING_S = 30.0

# Persona routing plugs in here (issue: personas): (state, request, body) -> routing dict or None.
# The persona hook: (stream, routing decision) for a persona request, None for any other.
RouteHook = Callable[[ServerState, GenerationRequest, dict[str, Any]],
                     Awaitable[tuple[Stream, dict[str, Any]] | None]]


def generation_request(body: dict[str, Any], route: str) -> GenerationRequest:
    checked = requests.validate(requests.AbiStreamRequest, body)
    if checked.messages is not None:
        messages, prompt = message_dicts(checked.messages), None
    elif checked.prompt is not None:
        messages, prompt = None, checked.prompt
    else:
        raise InvalidRequest("send 'prompt' (a string) or 'messages' (a list)", param="prompt")
    return GenerationRequest(model=checked.model, messages=messages, prompt=prompt, params=params_from(checked),
                             request_id=checked.request_id or new_request_id(), route=route)


async def open_stream(state: ServerState, body: dict[str, Any], route: str) -> tuple[Stream, dict[str, Any] | None]:
    return await open_stream_for(state, generation_request(body, route), body)


async def open_stream_for(state: ServerState, generation: GenerationRequest, body: dict[str, Any]
                          ) -> tuple[Stream, dict[str, Any] | None]:
    """The persona hook's stream (routing, moderation, the persona's prompt) when the request
    names a persona, else the model's own stream."""
    hook: RouteHook | None = state.services.get("persona_hook")
    opened = await hook(state, generation, body) if hook is not None else None
    if opened is not None:
        return opened
    return await state.engine.open(generation), None


def start_payload(stream: Stream, routing: dict[str, Any] | None) -> dict[str, Any]:
    return {"request_id": stream.request.request_id, "model": stream.model,
            "persona": routing.get("persona") if routing else None,
            "routing": {k: routing[k] for k in ("persona", "confidence", "reason", "policy") if k in routing}
            if routing else None}


def end_payload(stream: Stream) -> dict[str, Any]:
    return {"finish_reason": stream.finish_reason if stream.finish_reason in ("stop", "length") else "stop",
            "usage": {"prompt_tokens": stream.prompt_tokens, "completion_tokens": stream.completion_tokens},
            "timings": {k: v for k, v in stream.timings().items() if k in ("ttft_ms", "total_ms", "tokens_per_s")}}


def error_payload(error: AbiError) -> dict[str, Any]:
    payload: dict[str, Any] = {"code": error.code or "error", "message": error.message}
    if error.retry_after is not None:  # a WebSocket has no Retry-After header: queue_full says it here
        payload["retry_after"] = max(1, round(error.retry_after))
    return payload


class AbiSseEncoder:
    """abi.start / abi.token / abi.end / abi.error with `id:` counting from 0 per stream."""

    def __init__(self, routing: dict[str, Any] | None) -> None:
        self.routing = routing
        self.event_id = 0
        self.index = 0

    def _next_id(self) -> int:
        value, self.event_id = self.event_id, self.event_id + 1
        return value

    def start(self, stream: Stream) -> bytes:
        return sse_frame(start_payload(stream, self.routing), event="abi.start", event_id=self._next_id())

    def tokens(self, stream: Stream, pieces: list[str]) -> bytes:
        out = []
        for piece in pieces:
            n = self._next_id()
            out.append(b"event: abi.token\nid: %d\ndata: {\"text\":%s,\"index\":%d}\n\n"
                       % (n, dumps(piece).encode(), self.index))
            self.index += 1
        return b"".join(out)

    def end(self, stream: Stream) -> bytes:
        return sse_frame(end_payload(stream), event="abi.end", event_id=self._next_id())

    def error(self, stream: Stream, error: AbiError) -> bytes:
        return sse_frame(error_payload(error), event="abi.error", event_id=self._next_id())


async def abi_stream(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    body = await read_json(request, state.settings.server.max_body_bytes)
    stream, routing = await open_stream(state, body, route="abi")
    return await pump_sse(request, stream, AbiSseEncoder(routing))


class WsSession:
    """One WebSocket connection: up to 4 streams at once, each identified by request_id."""

    def __init__(self, state: ServerState, ws: web.WebSocketResponse, heartbeat: float | None,
                 request: web.Request | None = None, write_timeout: float | None = None) -> None:
        self.state = state
        self.ws = ws
        self.heartbeat = heartbeat
        self.request = request
        self.write_timeout = write_timeout
        self.streams: dict[str, Stream] = {}
        self.tasks: set[asyncio.Task] = set()
        self.pending: set[str] = set()
        self.dropped = False

    async def send(self, message: dict[str, Any]) -> None:
        if self.ws.closed or self.dropped:
            return
        data = dumps(message)
        if self.write_timeout is None:
            await self.ws.send_str(data)
            return
        try:
            async with asyncio.timeout(self.write_timeout):
                await self.ws.send_str(data)
        except TimeoutError:
            await self.drop(f"the client accepted no data for {self.write_timeout:g} s")
            raise ConnectionResetError("the client stopped reading") from None

    async def drop(self, reason: str) -> None:
        """A client that stopped reading: cancel its streams, say why if the socket still takes
        it, close (1008), and cut the connection when even that does not go through."""
        if self.dropped:
            return
        self.dropped = True
        log.warning("dropped WebSocket client: %s", reason)
        self.cancel(None)
        try:
            async with asyncio.timeout(DROP_GRACE_S):
                await self.ws.send_str(dumps({"type": "error", "request_id": None, "code": "client_too_slow",
                                              "message": f"{reason}; its streams were stopped"}))
                await self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"client too slow")
            return
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        transport = self.request.transport if self.request is not None else None
        if transport is not None:
            transport.abort()

    async def error(self, code: str, message: str, request_id: str | None = None) -> None:
        await self.send({"type": "error", "request_id": request_id, "code": code, "message": message})

    async def handle_text(self, text: str) -> None:
        try:
            message = loads_json(text, self.state.settings.server.max_body_bytes, what="the message")
        except AbiError as exc:
            await self.error("invalid_json" if isinstance(exc, InvalidJson) else exc.code or "invalid_request",
                             exc.message)
            return
        if not isinstance(message, dict):
            await self.error("invalid_request", "a message must be a JSON object with a 'type'")
            return
        kind = message.get("type")
        if kind == "cancel":
            self.cancel(message.get("request_id"))
        elif kind == "request":
            if len(self.streams) + len(self.pending) >= WS_MAX_CONCURRENT:
                await self.error("too_many_requests",
                                 f"at most {WS_MAX_CONCURRENT} requests run at once on one connection",
                                 message.get("request_id") if isinstance(message.get("request_id"), str) else None)
                return
            request_id = message.get("request_id") if isinstance(message.get("request_id"), str) else new_request_id()
            if request_id in self.streams or request_id in self.pending:
                await self.error("duplicate_request_id", f"request_id {request_id!r} is already running", request_id)
                return
            message["request_id"] = request_id
            self.pending.add(request_id)
            task = asyncio.create_task(self.run(message, request_id))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            await self.error("invalid_request", "'type' must be 'request' or 'cancel'")

    def cancel(self, request_id: Any) -> None:
        targets = list(self.streams.values()) if request_id is None else [self.streams.get(request_id)]
        for stream in targets:
            if stream is not None:
                stream.cancel()

    async def run(self, body: dict[str, Any], request_id: str) -> None:
        try:
            stream, routing = await open_stream(self.state, body, route="ws")
        except AbiError as exc:
            self.pending.discard(request_id)
            with contextlib.suppress(ConnectionError):
                await self.send({"type": "error", "request_id": request_id, **error_payload(exc)})
            return
        self.pending.discard(request_id)
        self.streams[request_id] = stream
        index = 0
        try:
            await self.send({"type": "start", **start_payload(stream, routing)})
            async for item in stream.events(None):
                if item is HEARTBEAT:
                    continue
                for piece in item:
                    await self.send({"type": "token", "request_id": request_id, "text": piece, "index": index})
                    index += 1
            if stream.error is not None:
                await self.send({"type": "error", "request_id": request_id, **error_payload(stream.error)})
            elif stream.finish_reason == "cancelled":
                await self.send({"type": "cancelled", "request_id": request_id,
                                 "usage": end_payload(stream)["usage"]})
            else:
                await self.send({"type": "end", "request_id": request_id, **end_payload(stream)})
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            if not stream.channel.closed:
                stream.cancel()
            self.streams.pop(request_id, None)

    async def close(self) -> None:
        self.cancel(None)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def _offered_bearer_protocol(request: web.Request) -> tuple[str, ...]:
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    return tuple(p for p in offered if p.startswith("bearer."))[:1]


async def abi_stream_ws(request: web.Request) -> web.WebSocketResponse:
    state = state_of(request)
    ws = web.WebSocketResponse(heartbeat=WS_PING_S, max_msg_size=WS_MAX_MESSAGE,
                               protocols=_offered_bearer_protocol(request))
    await ws.prepare(request)
    session = WsSession(state, ws, heartbeat_seconds(request), request, write_timeout_seconds(request))
    try:
        async for msg in ws:
            if session.dropped:
                break
            if msg.type == WSMsgType.TEXT:
                await session.handle_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await session.error("unsupported_data", "binary frames are not supported; send JSON text")
                await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"binary frames are not supported")
                break
            elif msg.type == WSMsgType.ERROR:
                break
    except ConnectionError:
        pass  # the client stopped reading (dropped) or went away
    finally:
        await session.close()
        if not ws.closed:
            try:
                async with asyncio.timeout(DROP_GRACE_S):  # a client that reads nothing cannot hold us
                    await ws.close()
            except (TimeoutError, ConnectionError):
                if request.transport is not None:
                    request.transport.abort()
    return ws


def setup(app: web.Application) -> None:
    app.router.add_post("/api/stream", abi_stream)
    app.router.add_get("/api/stream/ws", abi_stream_ws)
