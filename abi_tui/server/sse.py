"""The response that carries server-sent events. Frames themselves are written by
`abi_tui.net.sse`, the one SSE module (re-exported here for the route modules)."""

from __future__ import annotations

from aiohttp import web

from abi_tui.net.sse import DONE_FRAME, HEARTBEAT_FRAME, dumps, parse_sse, sse_frame

__all__ = ["DONE_FRAME", "HEARTBEAT_FRAME", "dumps", "open_sse", "parse_sse", "sse_frame"]


async def open_sse(request: web.Request, headers: dict[str, str] | None = None) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # proxies must not hold tokens back
        **(headers or {}),
    })
    response.enable_chunked_encoding()
    await response.prepare(request)
    return response
