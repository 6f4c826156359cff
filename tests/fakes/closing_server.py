"""An OpenAI-compatible streaming server on 127.0.0.1 that closes kept-alive connections the way
llama.cpp's llama-server does: its answers do not say `Connection: close`, yet it closes.

`mode`:
- "after_response": reads nothing more after a response and closes the connection
  `close_delay_s` later (a request the client sent on it meanwhile is lost unread, as with
  llama-server).
- "second_request": answers the first request on a connection, and closes a connection as soon
  as a second request arrives on it, without a byte of answer (a stale keep-alive, every time).
- "first_request": closes every connection on its first request (a server that is simply down
  mid-request; nothing about keep-alive).

Written on raw asyncio streams: aiohttp.web would not close a connection it was told to keep.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field


def _chunk(text: str | None, finish: str | None = None) -> bytes:
    delta = {"content": text} if text is not None else {}
    body = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@dataclass
class ClosingServer:
    mode: str = "after_response"
    close_delay_s: float = 0.02
    tokens: int = 4
    requests: int = 0          # requests read
    answered: int = 0          # requests answered
    dropped: int = 0           # requests read and closed on without an answer
    connections: int = 0
    _server: asyncio.Server | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> ClosingServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                self.requests += 1
                if self.mode == "first_request" or (self.mode == "second_request" and served >= 1):
                    self.dropped += 1
                    return
                await self._answer(head.split(b" ", 2)[:2], writer)
                served += 1
                self.answered += 1
                if self.mode == "after_response":
                    await asyncio.sleep(self.close_delay_s)
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    async def _answer(self, request_line: list[bytes], writer: asyncio.StreamWriter) -> None:
        method, path = request_line[0].decode(), request_line[1].decode()
        if method == "GET" and path == "/v1/models":
            body, kind = json.dumps({"object": "list", "data": [{"id": "fake-model"}]}).encode(), b"application/json"
        elif method == "GET":
            body, kind = b'{"status":"ok"}', b"application/json"
        else:
            body = _chunk("") + b"".join(_chunk(f"t{i} ") for i in range(self.tokens))
            body += _chunk(None, "length") + b"data: [DONE]\n\n"
            kind = b"text/event-stream"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: keep-alive\r\n\r\n" + body)
        await writer.drain()
