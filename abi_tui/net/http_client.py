"""The streaming HTTP client layer: the dashboard's client, the remote backends and the bench
send their requests through `HttpStreams` and read the bodies as they arrive (SSE through
`abi_tui.net.sse`).

One retry rule lives here. A request sent on a kept-alive connection that the server has
already closed fails before any byte of the response arrives (aiohttp raises
ServerDisconnectedError, or ClientOSError for a reset or a broken pipe): llama.cpp's
llama-server, for one, closes idle connections right after a response, and a client that sends
its next request at once races that close. The server never read the request, so it is sent
again: once, on a fresh connection, from a second session whose connector never reuses one (the
other idle connections in the pool may be just as stale). aiohttp retries only idempotent
methods itself, on another pooled connection; our streams are POSTs. A failure on a new
connection, a refused connection, or anything after the response started is never retried
here: that is the caller's policy (`abi_tui.backoff`).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

# What a stale kept-alive connection looks like from the client (ClientConnectorError, a
# subclass of ClientOSError, is a refused or failed connect: never stale).
STALE_ERRORS = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


async def _note_reuse(_session: aiohttp.ClientSession, context: SimpleNamespace, _params: Any) -> None:
    state = context.trace_request_ctx
    if isinstance(state, dict):
        state["reused"] = True


class HttpStreams:
    """One owner's HTTP session (opened on first use, in the running loop) plus the fresh-
    connection session of the retry rule. `open()` returns the response as soon as its head
    arrived; use it as `async with await streams.open(...) as response:`. `session` is there for
    what is not a request (WebSockets)."""

    def __init__(self, *, timeout: aiohttp.ClientTimeout | None = None, trust_env: bool = False,
                 limit: int = 0) -> None:
        self.timeout = timeout or aiohttp.ClientTimeout(total=None, sock_connect=10)
        self.trust_env = trust_env
        self.limit = limit  # 0: no cap (schedulers and load generators bound what is in flight)
        self.stale_retries = 0
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None

    def _new_session(self, *, force_close: bool) -> aiohttp.ClientSession:
        trace = aiohttp.TraceConfig()
        trace.on_connection_reuseconn.append(_note_reuse)
        connector = aiohttp.TCPConnector(limit=self.limit, limit_per_host=0, force_close=force_close)
        return aiohttp.ClientSession(connector=connector, timeout=self.timeout, trust_env=self.trust_env,
                                     trace_configs=[trace])

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._new_session(force_close=False)
        return self._session

    async def open(self, method: str, url: str, **kwargs: Any) -> aiohttp.ClientResponse:
        """Send a request (aiohttp's keyword arguments: json, data, headers, timeout...)."""
        state: dict[str, bool] = {}
        try:
            return await self.session.request(method, url, trace_request_ctx=state, **kwargs)
        except aiohttp.ClientConnectorError:
            raise
        except STALE_ERRORS as exc:
            if not state.get("reused"):
                raise
            log.debug("%s %s: the kept-alive connection was closed (%r); sending again on a new one",
                      method, url, exc)
        self.stale_retries += 1
        if self._fresh is None or self._fresh.closed:
            self._fresh = self._new_session(force_close=True)
        return await self._fresh.request(method, url, **kwargs)

    async def close(self) -> None:
        for session in (self._session, self._fresh):
            if session is not None and not session.closed:
                await session.close()

    async def __aenter__(self) -> HttpStreams:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
