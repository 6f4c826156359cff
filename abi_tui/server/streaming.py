"""Draining a Stream into an HTTP response: one write per wake-up, heartbeats on a timer,
errors after the start as events, and cancellation when the client goes away."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from abi_tui.backends.engine import HEARTBEAT, Stream
from abi_tui.errors import AbiError
from abi_tui.server.sse import HEARTBEAT_FRAME, open_sse
from abi_tui.server.state import state_of


class StreamEncoder(Protocol):
    def start(self, stream: Stream) -> bytes: ...

    def tokens(self, stream: Stream, pieces: list[str]) -> bytes: ...

    def end(self, stream: Stream) -> bytes: ...

    def error(self, stream: Stream, error: AbiError) -> bytes: ...


def heartbeat_seconds(request: web.Request) -> float | None:
    ms = state_of(request).settings.server.heartbeat_ms
    return ms / 1000 if ms > 0 else None


async def pump_sse(request: web.Request, stream: Stream, encoder: StreamEncoder) -> web.StreamResponse:
    response = await open_sse(request, headers={"X-Request-Id": stream.request.request_id})
    heartbeat = heartbeat_seconds(request)
    try:
        await response.write(encoder.start(stream))
        async for item in stream.events(heartbeat):
            if item is HEARTBEAT:
                await response.write(HEARTBEAT_FRAME)
            else:
                await response.write(encoder.tokens(stream, item))
        if stream.error is not None:
            await response.write(encoder.error(stream, stream.error))
        else:
            await response.write(encoder.end(stream))
        await response.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass  # the client left; the finally below stops the generation
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

