"""Draining a Stream into an HTTP response: one write per wake-up, heartbeats on a timer,
errors after the start as events, and cancellation when the client goes away.

A client that stops reading fills the socket, and aiohttp's write then waits for it to drain.
Every write here has a deadline (`server.write_timeout_s`): past it the stream is cancelled,
an error event is sent where the socket still takes it, and the connection is dropped, so a
stalled client can neither hold a slot nor make the server buffer without limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from abi_tui.backends.base import ClientTooSlow
from abi_tui.backends.engine import HEARTBEAT, Stream
from abi_tui.errors import AbiError
from abi_tui.server.sse import HEARTBEAT_FRAME, open_sse
from abi_tui.server.state import state_of

log = logging.getLogger(__name__)

# After a write timed out: how long the last error event and the end of the response may take
# before the connection is cut.
DROP_GRACE_S = 5.0


class StreamEncoder(Protocol):
    def start(self, stream: Stream) -> bytes: ...

    def tokens(self, stream: Stream, pieces: list[str]) -> bytes: ...

    def end(self, stream: Stream) -> bytes: ...

    def error(self, stream: Stream, error: AbiError) -> bytes: ...


class ClientStalled(Exception):
    """A write did not complete within the write timeout: the client is not reading."""


def heartbeat_seconds(request: web.Request) -> float | None:
    ms = state_of(request).settings.server.heartbeat_ms
    return ms / 1000 if ms > 0 else None


class WriteDeadline:
    """The write timeout of one response: a write still waiting `timeout` seconds after it began
    raises ClientStalled in the task that made it.

    One timer per response, fired at most once per `timeout` seconds and re-armed for the write
    pending then (or the next one), rather than a timer per write: `asyncio.timeout()` around
    each token's write and a heartbeat timer per wait (see `TokenChannel.wait`) were most of the
    15-25% of the event loop's CPU per streamed token that `benchmarks/loop_cpu.py` measured
    without them. The timer stops by itself once the task has ended; `close()` stops it sooner."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._since: float | None = None  # loop time the pending write began
        self._cancelling = 0
        self._expired = False
        self._timer = None if timeout is None else self._loop.call_later(timeout, self._check)

    def _check(self) -> None:
        assert self.timeout is not None and self._task is not None
        self._timer = None
        if self._task.done():
            return
        now = self._loop.time()
        if self._since is not None and now - self._since >= self.timeout:
            self._expired = True
            self._task.cancel()
            return
        self._timer = self._loop.call_at((now if self._since is None else self._since) + self.timeout, self._check)

    async def write(self, response: web.StreamResponse, data: bytes | None) -> None:
        """`response.write(data)` (or, for None, `write_eof`) within the deadline."""
        if self._expired:
            raise self._stalled()
        self._since = self._loop.time()
        if self._task is not None:
            self._cancelling = self._task.cancelling()
        try:
            await (response.write_eof() if data is None else response.write(data))
        except asyncio.CancelledError:
            # as asyncio.timeout(): our cancel becomes ClientStalled, anyone else's stays a cancel
            if self._expired and self._task is not None and self._task.uncancel() <= self._cancelling:
                raise self._stalled() from None
            raise
        finally:
            self._since = None

    def _stalled(self) -> ClientStalled:
        return ClientStalled(f"the client accepted no data for {self.timeout:g} s")

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def write_timeout_seconds(request: web.Request) -> float | None:
    seconds = state_of(request).settings.server.write_timeout_s
    return seconds if seconds and seconds > 0 else None


def write_deadline(request: web.Request) -> WriteDeadline:
    """The deadline for a streamed response's writes, for the task that writes it."""
    return WriteDeadline(write_timeout_seconds(request))


async def drop_connection(request: web.Request, response: web.StreamResponse, last: bytes = b"") -> None:
    """Send `last` and end the response if the socket still takes them, else cut the connection."""
    try:
        async with asyncio.timeout(DROP_GRACE_S):
            if last:
                await response.write(last)
            await response.write_eof()
        return
    except (TimeoutError, ConnectionError, RuntimeError):
        pass
    transport = request.transport
    if transport is not None:
        transport.abort()


def too_slow(stalled: ClientStalled) -> ClientTooSlow:
    return ClientTooSlow(f"{stalled}; the stream was stopped")


async def pump_sse(request: web.Request, stream: Stream, encoder: StreamEncoder) -> web.StreamResponse:
    headers = {"X-Request-Id": stream.request.request_id}
    return await pump(request, stream, encoder, lambda: open_sse(request, headers=headers),
                      heartbeat_seconds(request))


async def pump(request: web.Request, stream: Stream, encoder: StreamEncoder,
               open_response: Callable[[], Awaitable[web.StreamResponse]],
               heartbeat: float | None) -> web.StreamResponse:
    """Write a stream through `encoder` into the response `open_response` prepares, within the
    write timeout; a stalled or vanished client cancels the generation and frees its slot.
    `heartbeat` None sends none (NDJSON has no line a client would skip)."""
    deadline = write_deadline(request)
    response: web.StreamResponse | None = None
    try:
        # Inside the try: a client gone before the headers go out must still free its slot.
        response = await open_response()
        if opening := encoder.start(stream):
            await deadline.write(response, opening)
        async for item in stream.events(heartbeat):
            if item is HEARTBEAT:
                await deadline.write(response, HEARTBEAT_FRAME)
            else:
                await deadline.write(response, encoder.tokens(stream, item))
        if stream.error is not None:
            await deadline.write(response, encoder.error(stream, stream.error))
        else:
            await deadline.write(response, encoder.end(stream))
        await deadline.write(response, None)
    except ClientStalled as stalled:
        stream.cancel()
        log.warning("dropped stream %s: %s", stream.request.request_id, stalled)
        assert response is not None  # only writes time out
        await drop_connection(request, response, encoder.error(stream, too_slow(stalled)))
    except (ConnectionResetError, ConnectionError):
        if response is None:
            raise  # nothing was sent: the error middleware answers (the client is gone anyway)
    finally:
        deadline.close()
        if not stream.channel.closed:
            stream.cancel()
    return response


async def collect(stream: Stream) -> str:
    """The whole answer, for non-streaming requests; a disconnect cancels the generation."""
    try:
        return await stream.collect()
    finally:
        if not stream.channel.closed:
            stream.cancel()

