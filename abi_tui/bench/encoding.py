"""What encoding tokens for the wire costs: the server's own encoders, measured in-process.

SSE: `ChatChunks` (/v1/chat/completions), `CompletionChunks` (/v1/completions) and
`AbiSseEncoder` (/api/stream) encode one token per call, as the server does when each wake-up
carries one token. WebSocket: the server's JSON token message, framed by aiohttp's own
`WebSocketWriter` into a transport that only counts bytes. The baseline is the token's raw UTF-8
bytes. Each figure is the fastest of several rounds: the floor of the cost, without the noise
of whatever else the machine is doing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

DEFAULT_WORDS = ("the quick brown fox jumps over the lazy dog while a streaming benchmark counts "
                 "every token that arrives on time").split()


def sample_tokens(count: int = 2000, words: Sequence[str] = DEFAULT_WORDS) -> list[str]:
    """Word pieces as the mock streams them: the first bare, the rest with a leading space."""
    return [(w if i == 0 else " " + w) for i, w in ((i, words[i % len(words)]) for i in range(count))]


def _fake_stream(request_id: str, model: str) -> Any:
    # What the encoders read from a stream: the request id, the model name, and the two
    # options that switch them to per-event frames (off here: plain token streaming).
    params = SimpleNamespace(logprobs=False)
    return SimpleNamespace(request=SimpleNamespace(request_id=request_id, params=params), model=model,
                           prepared=SimpleNamespace(tool_format=None))


def _best_of(rounds: int, run: Callable[[], int]) -> tuple[float, int]:
    best = float("inf")
    size = 0
    for _ in range(rounds):
        started = time.perf_counter_ns()
        size = run()
        best = min(best, time.perf_counter_ns() - started)
    return best, size


def _figures(elapsed_ns: float, encoded: int, raw: int, count: int, unit: str) -> dict[str, Any]:
    return {f"ns_per_{unit}": round(elapsed_ns / count, 1), f"bytes_per_{unit}": round(encoded / count, 2),
            "raw_bytes_per_token": round(raw / count, 2), "bytes_ratio": round(encoded / raw, 2)}


def measure_sse(tokens: Sequence[str], rounds: int = 5) -> dict[str, dict[str, Any]]:
    from abi_tui.server.routes_openai import ChatChunks, CompletionChunks
    from abi_tui.server.routes_stream import AbiSseEncoder

    raw = sum(len(t.encode()) for t in tokens)
    stream = _fake_stream("chatcmpl-0123456789abcdef01234567", "mock/constant_rate")
    out: dict[str, dict[str, Any]] = {}
    makers: dict[str, Callable[[], Any]] = {
        "chat": lambda: ChatChunks(include_usage=False),
        "completions": lambda: CompletionChunks(include_usage=False),
        "abi": lambda: AbiSseEncoder(None),
    }
    for route, make in makers.items():
        def run(make: Callable[[], Any] = make) -> int:
            encoder = make()
            encoder.start(stream)
            return sum(len(encoder.tokens(stream, [piece])) for piece in tokens)
        elapsed, size = _best_of(rounds, run)
        out[route] = _figures(elapsed, size, raw, len(tokens), "token")
    return out


class _CountingTransport:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)

    def is_closing(self) -> bool:
        return False


async def measure_ws(tokens: Sequence[str], rounds: int = 5) -> dict[str, Any]:
    from aiohttp import WSMsgType
    from aiohttp._websocket.writer import WebSocketWriter

    from abi_tui.server.sse import dumps

    raw = sum(len(t.encode()) for t in tokens)
    request_id = "req-0123456789abcdef01234567"
    best = float("inf")
    size = 0
    for _ in range(rounds):
        transport = _CountingTransport()
        # A server writes unmasked frames; the protocol is only consulted when paused.
        writer = WebSocketWriter(SimpleNamespace(_paused=False), transport, use_mask=False)  # type: ignore[arg-type]
        started = time.perf_counter_ns()
        for index, piece in enumerate(tokens):
            # What WsSession.run + ws.send_str do per token.
            message = dumps({"type": "token", "request_id": request_id, "text": piece, "index": index})
            await writer.send_frame(message.encode("utf-8"), WSMsgType.TEXT)
        best = min(best, time.perf_counter_ns() - started)
        size = transport.size
    return _figures(best, size, raw, len(tokens), "message")


async def measure_encoding(tokens: Sequence[str] | None = None, rounds: int = 5) -> dict[str, Any]:
    """{"sse": {route: figures}, "ws": figures, "tokens": n}; see stats.DEFINITIONS."""
    tokens = list(tokens) if tokens else sample_tokens()
    return {"tokens": len(tokens), "sse": measure_sse(tokens, rounds), "ws": await measure_ws(tokens, rounds)}
