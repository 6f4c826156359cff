"""Thin streaming clients, one per wire protocol, that time every token on arrival.

- SSE over `/v1/chat/completions` (route `chat`) and `/v1/completions` (`completions`): any
  OpenAI-compatible server (abi, llama-server, llama_cpp.server, vLLM, ...).
- SSE over `/api/stream` (route `abi`): abi's own events, whose `abi.end` carries the server's
  timings.
- WebSocket `/api/stream/ws`: abi's multiplexed protocol, up to 4 requests per connection.

They read raw bytes as they arrive (`iter_any`) and stamp each read once, then parse (SSE with
`abi_tui.net.sse`): the time a token is counted is the time its bytes reached the client, not
the time Python got round to it. Requests go through `abi_tui.net.http_client`, which sends a
request again, once, when the kept-alive connection it went out on had been closed by the
server (llama-server closes idle connections right after a response).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from abi_tui.bench.records import RequestRecord, RequestSpec, ServerTimings, now
from abi_tui.net.http_client import HttpStreams
from abi_tui.net.sse import SseDecoder

ROUTES = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "abi": "/api/stream"}
WS_PATH = "/api/stream/ws"
# The server's limit of requests in flight on one WebSocket connection.
WS_PER_CONNECTION = 4


class Transport(Protocol):
    name: str

    async def send(self, spec: RequestSpec, record: RequestRecord) -> None:
        """Run one request to its end, filling `record`; never raises for a failed request."""
        ...

    async def close(self) -> None: ...


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def make_session(timeout_s: float) -> HttpStreams:
    """The run's HTTP layer; no connection cap: the load generator decides what is in flight."""
    return HttpStreams(timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=timeout_s))


def error_text(status: int | None, body: str) -> str:
    """`404 model_not_found: unknown model` from an OpenAI error object, else the body's start."""
    try:
        data = json.loads(body)
        error = data.get("error", data) if isinstance(data, dict) else {}
        if isinstance(error, dict):
            code = error.get("code") or error.get("type") or "error"
            message = error.get("message") or body[:200]
            return f"{status} {code}: {message}" if status else f"{code}: {message}"
        if isinstance(error, str):
            return f"{status} {error}" if status else error
    except ValueError:
        pass
    text = body.strip().replace("\n", " ")[:200]
    return f"{status} {text}" if status else text


class SseTransport:
    """SSE over one of ROUTES; each request is one HTTP POST on a kept-alive connection."""

    def __init__(self, base_url: str, route: str, streams: HttpStreams,
                 token: str | None = None, include_usage: bool = False) -> None:
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r} (known: {', '.join(ROUTES)})")
        self.name = f"sse:{route}"
        self.route = route
        self.url = base_url.rstrip("/") + ROUTES[route]
        self.streams = streams
        self.headers = {"Content-Type": "application/json", **auth_headers(token)}
        # stream_options is OpenAI's, and some servers refuse fields they do not know.
        self.include_usage = include_usage

    def body(self, spec: RequestSpec) -> dict[str, Any]:
        body: dict[str, Any] = {"model": spec.model, "max_tokens": spec.max_tokens}
        if self.route == "chat":
            body["messages"] = [{"role": "user", "content": spec.prompt}]
        else:
            body["prompt"] = spec.prompt
        if self.route != "abi":
            body["stream"] = True
            if self.include_usage:
                body["stream_options"] = {"include_usage": True}
        if spec.seed is not None:
            body["seed"] = spec.seed
        body.update(spec.extra)
        return body

    async def send(self, spec: RequestSpec, record: RequestRecord) -> None:
        payload = json.dumps(self.body(spec)).encode()
        decoder = SseDecoder()
        record.sent_at = now()
        try:
            async with await self.streams.open("POST", self.url, data=payload, headers=self.headers) as response:
                record.status = response.status
                if response.status != 200:
                    record.error = error_text(response.status, await response.text())
                    record.ended_at = now()
                    return
                async for chunk in response.content.iter_any():
                    arrived = now()
                    record.bytes_received += len(chunk)
                    for event in decoder.feed(chunk):
                        if self._handle(event.type, event.data, arrived, record):
                            record.ended_at = arrived
                            # Read to EOF so the kept-alive connection goes back to the pool:
                            # a half-read response would be closed and the next request would
                            # pay a new TCP connect inside its TTFT.
                            await response.content.read()
                            return
                record.ended_at = now()
                if record.error is None:
                    record.error = "stream: the server closed the stream before its end event"
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            record.error = "timeout: no data from the server within the read timeout"
        except aiohttp.ClientError as exc:
            record.error = f"connection: {exc.__class__.__name__}: {exc}"
        if record.ended_at is None:
            record.ended_at = now()

    async def close(self) -> None:
        pass  # the session, shared with the rest of the run, is closed by its owner

    def _handle(self, event: str, data: str, arrived: float, record: RequestRecord) -> bool:
        """Apply one event to the record; True when the stream is over."""
        if self.route == "abi":
            return _handle_abi(event, data, arrived, record)
        if data.strip() == "[DONE]":
            if record.finish_reason is None and record.error is None:
                record.finish_reason = "done"
            return True
        try:
            chunk = json.loads(data)
        except ValueError:
            return False
        if not isinstance(chunk, dict):
            return False
        if "error" in chunk:
            record.error = "stream: " + error_text(None, data)
            return False  # [DONE] follows
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            record.usage_completion_tokens = usage.get("completion_tokens")
            record.prompt_tokens = usage.get("prompt_tokens")
        for choice in chunk.get("choices") or []:
            if self.route == "chat":
                text = (choice.get("delta") or {}).get("content")
            else:
                text = choice.get("text")
            if text:
                record.token_times.append(arrived)
            if choice.get("finish_reason"):
                record.finish_reason = choice["finish_reason"]
        return False


def _handle_abi(event: str, data: str, arrived: float, record: RequestRecord) -> bool:
    if event == "abi.token":
        record.token_times.append(arrived)
        return False
    if event == "abi.end":
        try:
            end = json.loads(data)
        except ValueError:
            end = {}
        record.finish_reason = end.get("finish_reason") or "stop"
        usage = end.get("usage") or {}
        record.usage_completion_tokens = usage.get("completion_tokens")
        record.prompt_tokens = usage.get("prompt_tokens")
        record.server = ServerTimings.from_payload(end.get("timings"))
        return True
    if event == "abi.error":
        record.error = "stream: " + error_text(None, data)
        return True
    return False


def ws_url(base_url: str) -> str:
    parts = urlsplit(base_url.rstrip("/"))
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path + WS_PATH, "", ""))


class _WsConnection:
    """One socket; a reader task stamps each message on arrival and routes it by request_id."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.waiters: dict[str, asyncio.Queue] = {}
        self.reader = asyncio.create_task(self._read())

    @property
    def usable(self) -> bool:
        return not self.ws.closed and not self.reader.done()

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                arrived = now()
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(message.data)
                except ValueError:
                    continue
                # 2 header bytes up to 125 payload bytes, 4 up to 64 KiB (RFC 6455 §5.2).
                size = len(message.data.encode()) + (2 if len(message.data) < 126 else 4)
                waiter = self.waiters.get(data.get("request_id")) if isinstance(data, dict) else None
                if waiter is not None:
                    waiter.put_nowait((arrived, data, size))
        finally:
            for waiter in self.waiters.values():
                waiter.put_nowait((now(), None, 0))

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


class WsTransport:
    """abi's WebSocket protocol; requests share connections, at most 4 in flight on each."""

    name = "ws"

    def __init__(self, base_url: str, session: aiohttp.ClientSession, token: str | None = None,
                 timeout_s: float = 300.0) -> None:
        self.url = ws_url(base_url)
        self.session = session
        self.headers = auth_headers(token)
        self.timeout_s = timeout_s
        self.connections: list[_WsConnection] = []
        self._lock = asyncio.Lock()

    async def _acquire(self) -> _WsConnection:
        async with self._lock:
            self.connections = [c for c in self.connections if c.usable]
            for connection in self.connections:
                if len(connection.waiters) < WS_PER_CONNECTION:
                    return connection
            ws = await self.session.ws_connect(self.url, headers=self.headers, autoping=True,
                                               max_msg_size=4 * 1024 * 1024)
            connection = _WsConnection(ws)
            self.connections.append(connection)
            return connection

    async def send(self, spec: RequestSpec, record: RequestRecord) -> None:
        request_id = f"bench-{spec.index}-{secrets.token_hex(4)}"
        body: dict[str, Any] = {"type": "request", "request_id": request_id, "model": spec.model,
                                "prompt": spec.prompt, "max_tokens": spec.max_tokens}
        if spec.seed is not None:
            body["seed"] = spec.seed
        body.update(spec.extra)
        queue: asyncio.Queue = asyncio.Queue()
        connection: _WsConnection | None = None
        try:
            try:
                connection = await self._acquire()
            except (aiohttp.ClientError, OSError) as exc:
                record.sent_at = record.ended_at = now()
                record.error = f"connection: {exc.__class__.__name__}: {exc}"
                return
            connection.waiters[request_id] = queue
            record.sent_at = now()
            await connection.ws.send_str(json.dumps(body))
            while True:
                arrived, message, size = await asyncio.wait_for(queue.get(), self.timeout_s)
                record.bytes_received += size
                if message is None:
                    record.error = "connection: the WebSocket closed mid-stream"
                    record.ended_at = arrived
                    return
                kind = message.get("type")
                if kind == "token":
                    record.token_times.append(arrived)
                elif kind == "end":
                    record.finish_reason = message.get("finish_reason") or "stop"
                    usage = message.get("usage") or {}
                    record.usage_completion_tokens = usage.get("completion_tokens")
                    record.prompt_tokens = usage.get("prompt_tokens")
                    record.server = ServerTimings.from_payload(message.get("timings"))
                    record.ended_at = arrived
                    return
                elif kind in ("error", "cancelled"):
                    record.error = "stream: " + (
                        f"{message.get('code')}: {message.get('message')}" if kind == "error" else "cancelled")
                    record.ended_at = arrived
                    return
        except TimeoutError:
            record.error = "timeout: no message from the server within the read timeout"
        except (aiohttp.ClientError, ConnectionError) as exc:
            record.error = f"connection: {exc.__class__.__name__}: {exc}"
        finally:
            if connection is not None:
                connection.waiters.pop(request_id, None)
            if record.ended_at is None:
                record.ended_at = now()

    async def close(self) -> None:
        for connection in self.connections:
            await connection.close()
        self.connections.clear()
