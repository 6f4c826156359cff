"""Streaming clients for the reliability tests: ABI SSE, OpenAI SSE and WebSocket, each checking
that what it received is one complete stream."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import aiohttp

from abi_tui.server.sse import parse_sse

JSON = {"Content-Type": "application/json"}


class Refused(Exception):
    """The server refused the stream (status and body kept for the caller to judge)."""

    def __init__(self, status: int, body: dict, retry_after: str | None) -> None:
        super().__init__(f"{status}: {body}")
        self.status, self.body, self.retry_after = status, body, retry_after


class Incomplete(AssertionError):
    """The stream ended without everything a complete stream has."""


@dataclass
class Tally:
    streams: int = 0
    tokens: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)
    in_flight: int = 0
    held: int = 0  # the most streams open at once, seen from the clients

    def opened(self) -> None:
        self.in_flight += 1
        self.held = max(self.held, self.in_flight)

    def closed(self) -> None:
        self.in_flight -= 1


async def _refusal(response: aiohttp.ClientResponse) -> Refused:
    try:
        body = await response.json(content_type=None)
    except ValueError:
        body = {"raw": (await response.text())[:200]}
    return Refused(response.status, body, response.headers.get("Retry-After"))


async def abi_sse(session: aiohttp.ClientSession, model: str, max_tokens: int, headers: dict | None = None) -> int:
    body = {"model": model, "prompt": "one two three four", "max_tokens": max_tokens}
    async with session.post("/api/stream", data=json.dumps(body), headers={**JSON, **(headers or {})}) as response:
        if response.status != 200:
            raise await _refusal(response)
        events = [e for e in parse_sse(await response.text()) if "comment" not in e]
    kinds = [e.get("event") for e in events]
    if kinds != ["abi.start"] + ["abi.token"] * max_tokens + ["abi.end"]:
        raise Incomplete(f"ABI SSE events {kinds[:3]}...{kinds[-3:]} ({len(kinds)}) for {max_tokens} tokens")
    end = json.loads(events[-1]["data"])
    if end["usage"]["completion_tokens"] != max_tokens or end["finish_reason"] != "length":
        raise Incomplete(f"abi.end {end}")
    return max_tokens


async def openai_sse(session: aiohttp.ClientSession, model: str, max_tokens: int, headers: dict | None = None) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "one two three"}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}}
    async with session.post("/v1/chat/completions", data=json.dumps(body),
                            headers={**JSON, **(headers or {})}) as response:
        if response.status != 200:
            raise await _refusal(response)
        data = [e["data"] for e in parse_sse(await response.text()) if "data" in e]
    if not data or data[-1] != "[DONE]":
        raise Incomplete(f"OpenAI stream without [DONE]: {data[-2:]}")
    chunks = [json.loads(d) for d in data[:-1]]
    if any("error" in c for c in chunks):
        raise Incomplete(f"OpenAI stream error: {chunks[-1]}")
    tokens = sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content"))
    usage = chunks[-1].get("usage") or {}
    if tokens != max_tokens or usage.get("completion_tokens") != max_tokens:
        raise Incomplete(f"OpenAI stream: {tokens} content chunks, usage {usage}, expected {max_tokens}")
    return tokens


async def websocket(session: aiohttp.ClientSession, model: str, max_tokens: int, headers: dict | None = None,
                    requests: int = 1) -> int:
    """`requests` streams one after another on one connection."""
    total = 0
    async with session.ws_connect("/api/stream/ws", headers=headers or {}, heartbeat=None) as ws:
        for n in range(requests):
            request_id = f"r{n}"
            await ws.send_str(json.dumps({"type": "request", "request_id": request_id, "model": model,
                                          "prompt": "one two three", "max_tokens": max_tokens}))
            tokens = 0
            while True:
                message = json.loads(await ws.receive_str())
                kind = message["type"]
                if kind == "token":
                    if message["index"] != tokens:
                        raise Incomplete(f"WebSocket token index {message['index']}, expected {tokens}")
                    tokens += 1
                elif kind == "end":
                    if tokens != max_tokens or message["usage"]["completion_tokens"] != max_tokens:
                        raise Incomplete(f"WebSocket end after {tokens} tokens: {message}")
                    break
                elif kind == "error":
                    if message.get("code") == "queue_full":
                        raise Refused(429, {"error": message}, str(message.get("retry_after")))
                    raise Incomplete(f"WebSocket error {message}")
                elif kind != "start":
                    raise Incomplete(f"WebSocket message {message}")
            total += tokens
    return total


TRANSPORTS = (abi_sse, openai_sse, websocket)
