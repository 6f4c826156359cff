"""RemoteBackend: one model behind a provider, streaming. Subclasses speak the protocol
(`build` the request, `parse` what comes back); this module runs the attempt, its deadlines,
the retries before the first token and the breaker's bookkeeping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from abi_tui.backends.base import CancelFlag, GenerationRequest, Prepared, TokenChannel, Usage
from abi_tui.backends.remote.endpoints import Endpoint
from abi_tui.backends.remote.errors import (
    CircuitOpen,
    UpstreamError,
    UpstreamTimeout,
    is_failure,
    provider_message,
    upstream_error,
)
from abi_tui.backoff import retry_after_s
from abi_tui.errors import AbiError, ModelNotFound
from abi_tui.net.http_client import HttpStreams
from abi_tui.net.sse import LineSplitter, LineTooLong, SseDecoder

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.05      # CancelFlag is a plain flag: how often a stream looks at it
MAX_ERROR_BODY = 64 * 1024


@dataclass
class UpstreamCall:
    """What prepare() decided to send: a path under the endpoint's URL and a JSON body."""

    path: str
    body: dict[str, Any]


@dataclass
class Delta:
    """One thing a provider's stream said."""

    text: str = ""
    finish: str | None = None
    usage: Usage | None = None
    error: AbiError | None = None
    done: bool = False
    alive: bool = False  # a token that is not answer text (reasoning): the model is generating


def estimate_tokens(text: str) -> int:
    """No tokenizer here: about four characters a token, until the provider reports usage."""
    return max(1, (len(text) + 3) // 4) if text else 0


def estimate_prompt_tokens(request: GenerationRequest) -> int:
    if request.messages is not None:
        return sum(4 + estimate_tokens(m.get("content", "")) for m in request.messages)
    return estimate_tokens(request.prompt or "")


@dataclass
class _Progress:
    started: bool = False  # a token reached our client: no more retries
    healthy: bool = False  # this attempt produced tokens: the breaker has heard of its success
    finish: str | None = None
    usage: Usage | None = None


async def _cancel_when_flagged(cancel: CancelFlag, task: asyncio.Task) -> None:
    # The engine only sets a flag; cancelling the task closes the upstream response promptly,
    # also while it waits for a first token that may never come.
    while not task.done():
        if cancel.is_set:
            task.cancel()
            return
        await asyncio.sleep(CANCEL_POLL_S)


class RemoteBackend:
    """A model behind an HTTP provider; subclasses speak the provider's protocol."""

    kind = "remote"

    framing = "sse"  # how the response body is cut: "sse" (events) or "lines" (NDJSON)

    def __init__(self, model_id: str, endpoint: Endpoint, streams: HttpStreams) -> None:
        self.model_id = model_id
        self.model = model_id.split("/", 1)[1]
        self.endpoint = endpoint
        self.capacity = endpoint.capacity
        self.streams = streams

    # provider-specific ------------------------------------------------------------------------
    def build(self, request: GenerationRequest) -> UpstreamCall:
        raise NotImplementedError

    def headers(self) -> dict[str, str]:
        raise NotImplementedError

    def parse(self, call: UpstreamCall) -> Callable[[Any], list[Delta]]:
        """A fresh parser for one response: an SseEvent (or, for framing "lines", a line of
        bytes) in, what it said out."""
        raise NotImplementedError

    def decoder(self) -> SseDecoder | LineSplitter:
        return SseDecoder() if self.framing == "sse" else LineSplitter()

    def max_tokens(self, request: GenerationRequest) -> int:
        return request.params.max_tokens or 0  # 0: the provider's own limit

    # Backend protocol ---------------------------------------------------------------------
    async def prepare(self, request: GenerationRequest) -> Prepared:
        if not self.model:
            raise ModelNotFound(f"name a model after the prefix: {self.endpoint.name}/<model>", param="model")
        self.endpoint.breaker.check()  # a real 503 with Retry-After, before any response starts
        self.check_key()
        call = self.build(request)
        return Prepared(request, prompt_tokens=estimate_prompt_tokens(request),
                        max_tokens=self.max_tokens(request), payload=call)

    def check_key(self) -> None:
        endpoint = self.endpoint
        if endpoint.public and endpoint.api_key_env and not endpoint.api_key():
            raise UpstreamError(f"{endpoint.api_key_env} is not set: export it before starting abi to use "
                                f"{endpoint.name}/ models", code="upstream_auth_failed", failure=False)

    def start(self, prepared: Prepared, channel: TokenChannel, cancel: CancelFlag) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run(prepared, channel, cancel), name=f"remote {self.model_id}")
        channel.extra["task"] = task
        channel.extra["cancel_watch"] = loop.create_task(_cancel_when_flagged(cancel, task))

    def describe(self) -> dict[str, Any]:
        return {"id": self.model_id, "kind": self.kind, "endpoint": self.endpoint.name, "url": self.endpoint.url,
                "breaker": self.endpoint.breaker.to_dict()}

    # the stream ---------------------------------------------------------------------------
    async def _run(self, prepared: Prepared, channel: TokenChannel, cancel: CancelFlag) -> None:
        call: UpstreamCall = prepared.payload
        policy = self.endpoint.policy
        breaker = self.endpoint.breaker
        progress = _Progress()
        attempt = 0
        backoff = policy.backoff()
        probe = False
        try:
            while not cancel.is_set:
                try:
                    probe = breaker.acquire()
                except CircuitOpen as exc:
                    channel.close(None, exc)
                    return
                try:
                    await self._attempt(call, channel, progress)
                except AbiError as error:
                    probe = probe and not progress.healthy  # a streaming probe already closed the breaker
                    if is_failure(error):
                        breaker.record_failure(error.message, probe)
                    else:
                        breaker.release(probe)
                    probe = False
                    retry = (not progress.started and getattr(error, "retryable", False)
                             and attempt < policy.retries and breaker.state == "closed" and not cancel.is_set)
                    if not retry:
                        channel.close(None, error)
                        return
                    attempt += 1
                    delay = backoff.next(error.retry_after)
                    log.info("%s: attempt %d failed (%s); retrying in %.2f s", self.model_id, attempt,
                             error.message, delay)
                    await asyncio.sleep(delay)
                    continue
                if not progress.healthy:
                    breaker.record_success()  # an empty answer is still a healthy provider
                probe = False
                if progress.usage is not None:
                    channel.usage = progress.usage
                channel.close(progress.finish or "stop")
                return
            channel.close("cancelled")
        except asyncio.CancelledError:
            breaker.release(probe)
            channel.close("cancelled")
        except Exception as exc:  # a bug: end the stream with an error instead of hanging it
            log.exception("remote stream %s failed", self.model_id)
            breaker.release(probe)
            channel.close(None, UpstreamError(f"{self.endpoint.name}: internal error: {type(exc).__name__}"))

    async def _attempt(self, call: UpstreamCall, channel: TokenChannel, progress: _Progress) -> None:
        progress.healthy, progress.finish, progress.usage = False, None, None
        endpoint = self.endpoint
        policy = endpoint.policy
        name = endpoint.name
        url = endpoint.url + call.path
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.first_token_timeout_s
        timeout = aiohttp.ClientTimeout(total=None, connect=policy.connect_timeout_s, sock_read=None)
        try:
            async with asyncio.timeout_at(deadline):
                response = await self.streams.open("POST", url, json=call.body, headers=self.headers(),
                                                   timeout=timeout)
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamTimeout(f"{name}: no connection to {endpoint.url} within {policy.connect_timeout_s:g} s",
                                  retryable=True) from None
        except TimeoutError:
            raise self._first_token_timeout() from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{name}: cannot reach {endpoint.url}: {exc}", retryable=True) from None
        clean = False
        try:
            if response.status >= 400:
                try:
                    async with asyncio.timeout_at(deadline):
                        body = await response.content.read(MAX_ERROR_BODY)
                except (TimeoutError, aiohttp.ClientError):
                    body = b""
                message, code, _, param = provider_message(body)
                raise upstream_error(name, response.status, message, code=code, param=param,
                                     retry_after=retry_after_s(response.headers))
            parse = self.parse(call)
            decoder = self.decoder()
            # Only tokens move the deadline: keep-alive comments and pings (an abi upstream sends
            # heartbeats while it is stuck) must not keep a silent model alive forever.
            ticking = False
            done = False
            while not done:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await response.content.readany()
                except TimeoutError:
                    if ticking:
                        raise UpstreamTimeout(f"{name}: no token for {policy.between_tokens_timeout_s:g} s "
                                              "in the middle of the answer") from None
                    raise self._first_token_timeout() from None
                except (aiohttp.ClientError, ConnectionError) as exc:
                    raise UpstreamError(f"{name}: the connection broke during the answer: {exc}",
                                        retryable=True) from None
                try:
                    items = decoder.feed(chunk) if chunk else decoder.close()
                except LineTooLong as exc:
                    raise UpstreamError(f"{name}: {exc}") from None
                for item in items:
                    for delta in parse(item):
                        if delta.error is not None:
                            raise delta.error
                        if delta.text or delta.alive:
                            ticking = True
                            deadline = loop.time() + policy.between_tokens_timeout_s
                            if not progress.healthy:
                                progress.healthy = True
                                endpoint.breaker.record_success()
                        if delta.text:
                            progress.started = True
                            channel.put(delta.text)
                        if delta.finish is not None:
                            progress.finish = delta.finish
                        if delta.usage is not None:
                            progress.usage = delta.usage
                        done = done or delta.done
                if not chunk and not done:
                    if progress.finish is not None:
                        break  # some servers end the body without a final marker
                    raise UpstreamError(f"{name}: the stream ended before the answer finished", retryable=True)
            clean = True
        finally:
            # release() keeps a finished connection for reuse; close() drops it, which is what
            # tells the provider that we stopped listening (cancellation, errors).
            if clean:
                response.release()
            else:
                response.close()

    def _first_token_timeout(self) -> UpstreamTimeout:
        policy = self.endpoint.policy
        return UpstreamTimeout(f"{self.endpoint.name}: no first token within {policy.first_token_timeout_s:g} s")
