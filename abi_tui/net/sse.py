"""Server-sent events, both ways: frames the server writes, and one incremental parser that the
client, the remote backends and the bench all read streams with.

The parser follows the WHATWG event-stream format: lines end at CR, LF or CRLF (a CRLF split
across two reads is one line end); `:` starts a comment; `data:` lines of one event are joined
with LF; `event:`, `id:` and `retry:` (digits only) are kept; a blank line dispatches the event
(an event without data is not dispatched); a leading BOM is dropped. It works on bytes, so a
UTF-8 character split between two reads is decoded whole, and on reads split at any byte.

Why our own code and not aiohttp-sse: aiohttp-sse only writes (an `EventSourceResponse` for
aiohttp.web), so every client here would still need a parser; and its writer sends each event
with its own write under a lock and runs its own ping task, where the server's streams join
every token that arrived in one wake-up into one write, with a deadline on it
(`server/streaming.py`) and heartbeats of their own. Frames are three f-strings; the parser is
the part worth having once, and it is here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

HEARTBEAT_FRAME = b": heartbeat\n\n"
DONE_FRAME = b"data: [DONE]\n\n"
LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")
MAX_LINE_BYTES = 8 * 1024 * 1024  # a provider's usage or error line may be long; not unbounded


# ------------------------------------------------------------------------------------ writing
def dumps(data: Any) -> str:
    if type(data) is str:  # every streamed token: the C escaper json.dumps ends in, minus its set-up
        return encode_basestring(data)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def sse_frame(data: Any, event: str | None = None, event_id: int | str | None = None,
              retry_ms: int | None = None) -> bytes:
    """One event; `data` is JSON-encoded unless it is already a string."""
    text = data if isinstance(data, str) else dumps(data)
    head = ""
    if event is not None:
        head += f"event: {event}\n"
    if event_id is not None:
        head += f"id: {event_id}\n"
    if retry_ms is not None:
        head += f"retry: {int(retry_ms)}\n"
    # A line break inside data must become a new `data:` line, or the client splits the event;
    # SSE breaks lines at CR, LF and CRLF (and only there: JSON keeps U+2028 as a character).
    body = "".join(f"data: {line}\n" for line in LINE_BREAK.split(text))
    return (head + body + "\n").encode("utf-8")


def comment_frame(text: str) -> bytes:
    return "".join(f": {line}\n" for line in LINE_BREAK.split(text)).encode("utf-8") + b"\n"


# ------------------------------------------------------------------------------------ reading
class LineTooLong(ValueError):
    """A line grew past the reader's limit without ending."""


class LineSplitter:
    """Complete lines from bytes read in any pieces, without their ends (CR, LF or CRLF).
    Also the reader of newline-delimited JSON (Ollama, model pulls)."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._skip_lf = False  # the last read ended in CR: a LF opening the next one is its pair

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        if b"\n" not in chunk and b"\r" not in chunk:  # a piece of a line: no re-scan of the buffer
            self._buffer += chunk
            self._check()
            return []
        data = bytes(self._buffer) + chunk
        self._buffer.clear()
        lines = _LINE_BREAK_BYTES.split(data)
        self._buffer += lines.pop()
        self._skip_lf = data.endswith(b"\r")
        self._check()
        return lines

    def close(self) -> list[bytes]:
        """At the end of the body: the last line, when it had no line end."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return [rest] if rest else []

    def _check(self) -> None:
        if len(self._buffer) > self.max_line:
            size = len(self._buffer)
            self._buffer.clear()
            raise LineTooLong(f"a line of the stream grew past {self.max_line} bytes ({size} without an end)")


@dataclass(frozen=True, slots=True)
class SseEvent:
    """A dispatched event, or a comment when `comment` is not None (only when asked for).
    `event` is None when the event named no type (the format's "message"); `id` and `retry`
    are the fields this event set."""

    data: str = ""
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comment: str | None = None

    @property
    def type(self) -> str:
        return self.event or "message"

    def as_dict(self) -> dict[str, str]:
        if self.comment is not None:
            return {"comment": self.comment.strip()}
        out = {"data": self.data}
        for name in ("event", "id", "retry"):
            value = getattr(self, name)
            if value is not None:
                out[name] = str(value)
        return out


class SseDecoder:
    """Feed the bytes of an event stream as they arrive; get the events each read completed.
    `comments=True` also yields comments (keep-alives) as events with `comment` set.
    `last_id` and `retry_ms` keep the stream's last `id:` and `retry:` as the format says."""

    def __init__(self, *, comments: bool = False, max_line: int = MAX_LINE_BYTES) -> None:
        self.comments = comments
        self.last_id: str | None = None
        self.retry_ms: int | None = None
        self._lines = LineSplitter(max_line)
        self._first = True
        self._reset()

    def _reset(self) -> None:
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes | str) -> list[SseEvent]:
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8", "surrogatepass")
        out: list[SseEvent] = []
        for line in self._lines.feed(chunk):
            self.line(line.decode("utf-8", "replace"), out)
        return out

    def close(self) -> list[SseEvent]:
        """At the end of the body: an event without its closing blank line is dropped (as the
        format says), a last comment line is still seen."""
        out: list[SseEvent] = []
        for line in self._lines.close():
            self.line(line.decode("utf-8", "replace"), out)
        self._reset()
        return out

    def line(self, line: str, out: list[SseEvent]) -> None:
        """One complete line, without its end; a dispatched event is appended to `out`."""
        if self._first:
            self._first = False
            line = line.removeprefix("\ufeff")
        if not line:
            if self._data:
                out.append(SseEvent("\n".join(self._data), self._event, self._id, self._retry))
            self._reset()
            return
        if line.startswith(":"):
            if self.comments:
                out.append(SseEvent(comment=line[1:].removeprefix(" ")))
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = self.last_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = self.retry_ms = int(value)


def parse_sse(text: str) -> list[dict[str, str]]:
    """A whole event stream, decoded to text, as dicts (`data`, and `event`/`id`/`retry` when
    set) with comments as `{"comment": ...}`: what tests and one-shot readers want."""
    decoder = SseDecoder(comments=True)
    out: list[SseEvent] = []
    # Not str.splitlines(): it also breaks at U+2028, U+0085 and others that tokens may hold.
    lines = LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    for line in lines:
        decoder.line(line, out)
    return [event.as_dict() for event in out]
