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


def write_timeout_seconds(request: web.Request) -> float | None:
    seconds = state_of(request).settings.server.write_timeout_s
    return seconds if seconds and seconds > 0 else None


async def write_within(response: web.StreamResponse, data: bytes | None, timeout: float | None) -> None:
    """`response.write` (or, for None, `write_eof`) with a deadline; raises ClientStalled when
    the client does not read."""
    write = response.write_eof() if data is None else response.write(data)
    if timeout is None:
        await write
        return
    try:
        async with asyncio.timeout(timeout):
            await write
    except TimeoutError:
        raise ClientStalled(f"the client accepted no data for {timeout:g} s") from None


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
    timeout = write_timeout_seconds(request)
    response: web.StreamResponse | None = None
    try:
        # Inside the try: a client gone before the headers go out must still free its slot.
        response = await open_response()
        if opening := encoder.start(stream):
            await write_within(response, opening, timeout)
        async for item in stream.events(heartbeat):
            if item is HEARTBEAT:
                await write_within(response, HEARTBEAT_FRAME, timeout)
            else:
                await write_within(response, encoder.tokens(stream, item), timeout)
        if stream.error is not None:
            await write_within(response, encoder.error(stream, stream.error), timeout)
        else:
            await write_within(response, encoder.end(stream), timeout)
        await write_within(response, None, timeout)
    except ClientStalled as stalled:
        stream.cancel()
        log.warning("dropped stream %s: %s", stream.request.request_id, stalled)
        assert response is not None  # only writes time out
        await drop_connection(request, response, encoder.error(stream, too_slow(stalled)))
    except (ConnectionResetError, ConnectionError):
        if response is None:
            raise  # nothing was sent: the error middleware answers (the client is gone anyway)
    finally:
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

