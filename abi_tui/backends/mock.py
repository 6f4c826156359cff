"""`mock/<pattern>[?min_ms=1&max_ms=10&seed=42]`: a token generator with known timing.

It exists to measure the serving pipeline: delays are asynchronous sleeps on absolute deadlines
(so timer slack does not accumulate), prompts are counted by whitespace, and the text it streams
is the prompt's words played back, so nobody mistakes it for a model's answer. When a request
offers tools, that text is read for calls in the fallback `<tool_call>` format, as a model's
answer would be: a message that is a call, played back, tests the tool-call path end to end.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from abi_tui.backends import tool_calls
from abi_tui.backends.base import CancelFlag, GenerationRequest, Prepared, TokenChannel
from abi_tui.backends.mock_patterns import PATTERNS, token_delay_ms
from abi_tui.backends.text import StopMatcher
from abi_tui.errors import ContextLengthExceeded, GenerationError, InvalidRequest, ModelNotFound

DEFAULT_MAX_TOKENS = 64
MOCK_CONTEXT = 131072  # prompt + completion tokens per request
FALLBACK_WORDS = "this is the abi mock backend streaming tokens at a configured rate".split()


@dataclass(frozen=True)
class MockSpec:
    pattern: str = "constant_rate"
    min_ms: float = 1.0
    max_ms: float = 10.0
    seed: int = 42

    @classmethod
    def parse(cls, model_id: str) -> MockSpec:
        parts = urlsplit(model_id)
        pattern = parts.path.removeprefix("mock/") or "constant_rate"
        if pattern not in PATTERNS:
            raise ModelNotFound(f"unknown mock pattern {pattern!r}; use one of: {', '.join('mock/' + p for p in PATTERNS)}",
                                param="model")
        query = parse_qs(parts.query)
        known = {"min_ms", "max_ms", "seed"}
        unknown = set(query) - known
        if unknown:
            raise InvalidRequest(f"unknown mock option {sorted(unknown)[0]!r} (known: min_ms, max_ms, seed)", param="model")
        try:
            min_ms = float(query.get("min_ms", [cls.min_ms])[0])
            max_ms = float(query.get("max_ms", [cls.max_ms])[0])
            seed = int(query.get("seed", [cls.seed])[0])
        except ValueError:
            raise InvalidRequest(f"bad mock option in {model_id!r}: min_ms and max_ms are numbers, seed an integer",
                                 param="model") from None
        if not 0 <= min_ms <= max_ms <= 60_000:
            raise InvalidRequest("mock delays need 0 <= min_ms <= max_ms <= 60000", param="model")
        return cls(pattern, min_ms, max_ms, seed)


def count_words(request: GenerationRequest) -> int:
    if request.messages is not None:
        return sum(len(m.get("content", "").split()) for m in request.messages)
    return len((request.prompt or "").split())


def prompt_words(request: GenerationRequest) -> list[str]:
    if request.messages:
        words = request.messages[-1].get("content", "").split()
    else:
        words = (request.prompt or "").split()
    return words or FALLBACK_WORDS


class MockBackend:
    kind = "mock"

    def __init__(self, model_id: str, capacity: int = 100) -> None:
        self.spec = MockSpec.parse(model_id)
        self.model_id = model_id
        self.capacity = capacity

    async def prepare(self, request: GenerationRequest) -> Prepared:
        max_tokens = request.params.max_tokens or DEFAULT_MAX_TOKENS
        prompt_tokens = count_words(request)
        if prompt_tokens + max_tokens > MOCK_CONTEXT:
            # Like a real model's context: a request cannot ask for a practically endless stream.
            raise ContextLengthExceeded(
                f"the mock's context is {MOCK_CONTEXT} tokens; this request needs {prompt_tokens} prompt + "
                f"{max_tokens} completion tokens", param="max_tokens")
        offered = tool_calls.offered_tools(request.tools, request.tool_choice) if request.messages else []
        return Prepared(request, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                        tool_format=tool_calls.FALLBACK if offered else None)

    def start(self, prepared: Prepared, channel: TokenChannel, cancel: CancelFlag) -> None:
        task = asyncio.get_running_loop().create_task(self._run(prepared, channel, cancel))
        channel.extra["task"] = task
        cancel.on_set(task.cancel)  # a cancel ends a long delay now, not when it runs out

    async def _run(self, prepared: Prepared, channel: TokenChannel, cancel: CancelFlag) -> None:
        spec = self.spec
        seed = prepared.request.params.seed if prepared.request.params.seed is not None else spec.seed
        rng = random.Random(seed)
        words = prompt_words(prepared.request)
        stops = StopMatcher(prepared.request.params.stop)
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        total = prepared.max_tokens
        finish = "length"
        try:
            for index in range(total):
                deadline += token_delay_ms(spec.pattern, index, total, spec.min_ms, spec.max_ms, rng) / 1000
                delay = deadline - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif index % 32 == 31:
                    await asyncio.sleep(0)  # zero delays must not hold the event loop for the whole run
                if channel.backlog >= channel.high_water:
                    await channel.wait_writable(cancel)  # the client is not reading: wait, do not pile up
                if cancel.is_set:
                    finish = "cancelled"
                    break
                word = words[index % len(words)]
                text = stops.feed(word if index == 0 else " " + word)
                if text:
                    channel.put(text)
                else:
                    channel.count_silent_token()
                if stops.stopped:
                    finish = "stop"
                    break
        except asyncio.CancelledError:
            finish = "cancelled"
        except Exception as exc:  # a bug or an injected fault: end the stream with an error, never hang it
            channel.close(None, GenerationError(f"the mock backend failed: {type(exc).__name__}: {exc}"))
            return
        channel.close(finish)

    def describe(self) -> dict[str, Any]:
        return {"id": self.model_id, "kind": self.kind, "pattern": self.spec.pattern,
                "min_ms": self.spec.min_ms, "max_ms": self.spec.max_ms}
