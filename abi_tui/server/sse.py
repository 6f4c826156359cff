"""Server-sent events: encoding, and the response that carries them."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

HEARTBEAT_FRAME = b": heartbeat\n\n"
SSE_LINE_BREAK = re.compile(r"\r\n|\r|\n")
DONE_FRAME = b"data: [DONE]\n\n"


def dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def sse_frame(data: Any, event: str | None = None, event_id: int | None = None) -> bytes:
    """One event; `data` is JSON-encoded unless it is already a string."""
    text = data if isinstance(data, str) else dumps(data)
    head = ""
    if event is not None:
        head += f"event: {event}\n"
    if event_id is not None:
        head += f"id: {event_id}\n"
    # A line break inside data must become a new `data:` line, or the client splits the event;
    # SSE breaks lines at CR, LF and CRLF (and only there: JSON keeps U+2028 as a character).
    body = "".join(f"data: {line}\n" for line in SSE_LINE_BREAK.split(text))
    return (head + body + "\n").encode("utf-8")


def parse_sse(text: str) -> list[dict[str, str]]:
    """Parse an SSE byte stream decoded to text (clients and tests use this)."""
    events, current, data = [], {}, []
    # Not str.splitlines(): it also breaks at U+2028, U+0085 and others that tokens may hold.
    lines = SSE_LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    for line in lines:
        if not line:
            if data or current:
                current["data"] = "\n".join(data)
                events.append(current)
            current, data = {}, []
            continue
        if line.startswith(":"):
            events.append({"comment": line[1:].strip()})
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field in ("event", "id", "retry"):
            current[field] = value
    return events


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
