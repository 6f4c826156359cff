"""The Backend protocol and the records every backend shares.

A request flows: server -> `InferenceEngine.open()` -> backend `prepare()` (validation, prompt
tokens) -> scheduler queue -> backend `start()` which feeds a `TokenChannel` -> the server drains
the channel, one write per wake-up.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from abi_tui.errors import AbiError

log = logging.getLogger(__name__)


@dataclass
class SamplingParams:
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    dry_multiplier: float = 0.0  # DRY repetition penalty (0 = off)
    logit_bias: dict[int, float] = field(default_factory=dict)
    json_mode: bool = False
    json_schema: dict[str, Any] | None = None  # every answer validates against it (a grammar)
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass
class GenerationRequest:
    model: str | None
    # OpenAI's message dicts: role, content (text), an assistant's tool_calls, a tool's tool_call_id
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""
    route: str = ""
    persona: str | None = None  # set when a persona answers (metrics by persona)
    tools: list[dict[str, Any]] | None = None  # OpenAI's tool definitions ({"type": "function", ...})
    tool_choice: Any = "none"  # "none" | "auto" | "required" | {"type": "function", "function": {"name"}}
    parallel_tool_calls: bool = True
    n: int = 1  # choices; the server opens one stream per choice


@dataclass
class Prepared:
    """A validated request: what the backend needs to start, and the exact prompt size."""

    request: GenerationRequest
    prompt_tokens: int
    max_tokens: int
    payload: Any = None
    # The call format the answer is read in when the request offered tools (tool_calls.ToolFormat),
    # and whether a grammar forces the answer to be calls only.
    tool_format: Any = None
    tools_forced: bool = False


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


class CancelFlag:
    """Checked between tokens by generation threads and tasks; setting it is thread-safe."""

    __slots__ = ("_callbacks", "is_set")

    def __init__(self) -> None:
        self.is_set = False
        self._callbacks: list[Callable[[], None]] | None = None

    def set(self) -> None:
        if self.is_set:
            return
        self.is_set = True
        for callback in self._callbacks or ():
            callback()

    def on_set(self, callback: Callable[[], None]) -> None:
        """Run `callback` when the flag is set (in the setter's thread): tasks waiting on a timer
        or a socket stop at once instead of at their next check."""
        if self.is_set:
            callback()
        else:
            self._callbacks = [*(self._callbacks or ()), callback]


class ClientTooSlow(AbiError):
    """The client stopped reading: its stream is dropped so server memory stays bounded."""

    status = 503
    type = "server_error"
    code = "client_too_slow"


# Undrained pieces per stream. A consumer that keeps up drains the channel on every wake-up, so
# these are reached only when the client stops reading and the handler sits in a blocked write.
PENDING_HIGH_WATER = 1024  # producers on the loop (the mock) wait below this: backpressure
PENDING_LIMIT = 16384  # a producer that cannot wait (a decode thread) fails the stream here

_held = threading.local()


def hold_wakes() -> None:
    """From now on, the loop wake-ups that channels ask for on this thread wait for send_wakes().

    For the compute thread, which sends them right before it blocks in llama_decode (and before
    it waits for work or runs a job). Sent per token, each wake-up let the loop thread write that
    token to its socket while the compute thread waited for the GIL: at 8 streams on SmolLM2 the
    compute thread spent 1.67-1.85 ms between two decodes (of a 38 ms step), of which sampling and
    emitting took 0.33 ms. Held and sent as the decode starts, the loop's work overlaps the decode;
    with the GIL kept through the wake-up itself (`_wake`) and no wake-up between a step and the
    next decode, 0.47 ms between decodes at 8 streams and 0.27 ms at 1 (0.96 and 0.84 before).
    """
    _held.calls = []


def send_wakes() -> None:
    """Send the wake-ups held on this thread, one per loop (`_wake`), in order."""
    calls = getattr(_held, "calls", None)
    if not calls:
        return
    _held.calls = []
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Callable[..., Any], tuple[Any, ...]]]] = {}
    for loop, fn, args in calls:
        by_loop.setdefault(loop, []).append((fn, args))
    for loop, batch in by_loop.items():
        try:
            _wake(loop, _run_all, batch)
        except RuntimeError:  # the loop is closed: nobody is left to read these channels
            pass


def _libc_send() -> Any:
    """libc's `send`, called with the GIL held (ctypes.PyDLL); None where there is none."""
    try:
        send = ctypes.PyDLL(None).send
    except (OSError, AttributeError, TypeError):  # not a POSIX libc
        return None
    send.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int)
    send.restype = ctypes.c_ssize_t
    return send


_SEND = _libc_send() if hasattr(socket, "MSG_DONTWAIT") else None


def _wake(loop: asyncio.AbstractEventLoop, fn: Callable[[Any], Any], arg: Any) -> None:
    """`loop.call_soon_threadsafe(fn, arg)`, without letting go of the GIL where it can.

    call_soon_threadsafe wakes the loop with a `send` on its self-pipe socket, and Python lets go
    of the GIL around that system call: the woken loop thread takes it and writes the tokens to
    their sockets while the compute thread, one step from its next llama_decode, waits to get it
    back (about 0.4 ms at 1 stream on SmolLM2). Sent with the GIL held, the loop thread wakes and
    waits until the compute thread lets go of the GIL in llama_decode, so the loop's work overlaps
    the decode. This reaches into asyncio's selector loop (`_csock`, `_call_soon`: what
    call_soon_threadsafe does, less the GIL release; tests/backends/test_held_wakes.py checks
    they are there); any other loop gets call_soon_threadsafe.
    """
    csock = getattr(loop, "_csock", None)
    if _SEND is None or csock is None or loop.is_closed():
        loop.call_soon_threadsafe(fn, arg)
        return
    loop._call_soon(fn, (arg,), None)  # type: ignore[attr-defined]
    _SEND(csock.fileno(), b"\0", 1, socket.MSG_DONTWAIT)  # a full pipe already wakes the loop


def _run_all(batch: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
    for fn, args in batch:
        try:
            fn(*args)
        except Exception:  # as the loop does for a callback of its own: one failure stops no other
            log.exception("a held wake-up failed")


def _call_soon_threadsafe(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """`loop.call_soon_threadsafe`, or held for send_wakes() on a thread that holds them."""
    calls = getattr(_held, "calls", None)
    if calls is None:
        loop.call_soon_threadsafe(fn, *args)
    else:
        calls.append((loop, fn, args))


class TokenChannel:
    """Text pieces from one producer (a thread or a task) to one asyncio consumer.

    The producer appends without a thread hop per token: it schedules one wake-up of the loop
    and every piece that arrives before the consumer runs rides on that same wake-up, so a fast
    generator meets a slow socket with one write per wake-up instead of one per token.

    Memory is bounded: a producer on the loop awaits `wait_writable()` (backpressure); any
    producer that gets `limit` pieces ahead of the consumer has its stream cancelled, and the
    channel closes with ClientTooSlow once the backend stops.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int | None = None,
                 high_water: int | None = None, coalesce_s: float = 0.0) -> None:
        self._loop = loop
        # A producer thread faster than this wakes the loop at most once per interval, carrying
        # every token since: at thousands of tokens a second, one wake-up, write and client
        # read per token would cost more CPU than the tokens themselves. Slower producers
        # (a token every few ms) wake it at once, so their latency is untouched.
        self.coalesce_s = coalesce_s
        self._last_wake = 0.0
        self._quiet_since: float | None = None  # the last wake-up or heartbeat (wait's timeout)
        self._quiet_timer: asyncio.TimerHandle | None = None
        self._pieces: deque[str] = deque()
        self._waiter: asyncio.Future | None = None  # the consumer's, while it waits
        self._wake_pending = False
        self.limit = limit or PENDING_LIMIT
        self.high_water = min(high_water or PENDING_HIGH_WATER, self.limit)
        self._space: asyncio.Event | None = None  # created when a producer waits for room
        self.overflowed = False
        self.on_overflow: Callable[[], None] | None = None  # the stream's cancel, thread-safe
        self.closed = False
        self.finish_reason: str | None = None
        self.error: AbiError | None = None
        self.completion_tokens = 0
        self.first_token_at: float | None = None
        self.extra: dict[str, Any] = {}
        # Set by backends whose upstream reports exact counts (remote providers) at the end.
        self.usage: Usage | None = None
        self._on_close: list[Callable[[], None]] = []

    # producer side (any thread) -------------------------------------------------------------
    def put(self, piece: str, count: bool = True) -> None:
        """Add text; `count` says it came from one generated token (usage counts them)."""
        if count:
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            self.completion_tokens += 1
        if len(self._pieces) >= self.limit or self.overflowed:
            self._overflow()
            return
        self._pieces.append(piece)
        if not self._wake_pending:
            self._wake_pending = True
            if self._on_loop():
                self._wake()
                return
            early = self._last_wake + self.coalesce_s - time.perf_counter()
            if early > 0:
                _call_soon_threadsafe(self._loop, self._loop.call_later, early, self._wake)
            else:
                _call_soon_threadsafe(self._loop, self._wake)

    def count_silent_token(self) -> None:
        """A token that produced no text yet (a partial UTF-8 sequence, a held-back stop prefix)."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.completion_tokens += 1

    def _overflow(self) -> None:
        """The consumer is `limit` pieces behind: stop the producer (it closes the channel
        within a token, and that close becomes ClientTooSlow); later pieces are dropped."""
        if self.overflowed:
            return
        self.overflowed = True
        if self.on_overflow is not None:
            self.on_overflow()

    @property
    def backlog(self) -> int:
        return len(self._pieces)

    async def wait_writable(self, cancel: CancelFlag | None = None) -> None:
        """For producers on the loop: wait while the consumer is `high_water` pieces behind
        (until it drains, the channel closes, or `cancel` is set and `wake_producer` called)."""
        while len(self._pieces) >= self.high_water and not self.closed and not (cancel and cancel.is_set):
            if self._space is None:
                self._space = asyncio.Event()
            self._space.clear()
            await self._space.wait()

    def wake_producer(self) -> None:
        """Wake a producer waiting for room, so it sees its cancel flag (call on the loop)."""
        if self._space is not None:
            self._space.set()

    def close(self, finish_reason: str | None, error: AbiError | None = None) -> None:
        if self._on_loop():
            self._close(finish_reason, error)
        else:
            _call_soon_threadsafe(self._loop, self._close, finish_reason, error)

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _wake(self) -> None:
        self._wake_pending = False
        self._last_wake = self._quiet_since = time.perf_counter()
        self._release(True)

    def _release(self, ready: bool) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(ready)

    def _close(self, finish_reason: str | None, error: AbiError | None) -> None:
        if self.closed:
            return
        if self.overflowed and error is None:
            finish_reason, error = None, ClientTooSlow(
                f"the client fell {self.limit} pieces behind the generation; the stream was stopped")
        self.finish_reason, self.error, self.closed = finish_reason, error, True
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
            self._quiet_timer = None
        if self._space is not None:
            self._space.set()
        self._release(True)
        for callback in self._on_close:
            callback()

    def on_close(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    # consumer side (the event loop) --------------------------------------------------------
    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until pieces are ready or the channel closed; False once nothing has arrived for
        `timeout` seconds (since the last wake-up, the last False, or the first wait)."""
        if self._pieces or self.closed:
            return True
        # One future per wake-up, and one timer per `timeout` period rather than per wait: a
        # timer armed and cancelled for every token is a cost on the loop's token path, which
        # on two cores comes out of the decode (benchmarks/loop_cpu.py, server/streaming.py).
        waiter = self._waiter = self._loop.create_future()
        if timeout is not None and self._quiet_timer is None:
            if self._quiet_since is None:
                self._quiet_since = time.perf_counter()
            self._arm_quiet(timeout)
        try:
            return await waiter
        finally:
            self._waiter = None

    def _arm_quiet(self, timeout: float) -> None:
        assert self._quiet_since is not None
        delay = self._quiet_since + timeout - time.perf_counter()
        self._quiet_timer = self._loop.call_later(max(0.0, delay), self._quiet, timeout)

    def _quiet(self, timeout: float) -> None:
        self._quiet_timer = None
        waiter = self._waiter
        if self.closed or waiter is None or waiter.done():
            return  # the consumer is busy: its next wait arms the timer again
        assert self._quiet_since is not None
        if time.perf_counter() - self._quiet_since < timeout:
            self._arm_quiet(timeout)  # something arrived since the timer was armed
            return
        self._quiet_since = time.perf_counter()
        waiter.set_result(False)

    def drain(self) -> list[str]:
        pieces = []
        while self._pieces:
            pieces.append(self._pieces.popleft())
        if self._space is not None:
            self._space.set()
        return pieces

    @property
    def done(self) -> bool:
        return self.closed and not self._pieces


class Backend(Protocol):
    """What the engine needs from a backend. `start` must return at once and never block."""

    model_id: str
    kind: str
    capacity: int

    async def prepare(self, request: GenerationRequest) -> Prepared: ...

    def start(self, prepared: Prepared, channel: TokenChannel, cancel: CancelFlag) -> None: ...

    def describe(self) -> dict[str, Any]: ...

