"""The async client of the abi server API: the dashboard's only way in (docs/ARCHITECTURE.md).

Everything the UI shows comes through here, over HTTP, SSE (`/api/events`, `/api/stream`,
model pulls) and the WebSocket stream, so `abi dash --connect` to a remote server works exactly
like the embedded one. No Textual here: the same client serves scripts and tests.

Errors become `ClientError` carrying the server's OpenAI error message (and status and code);
a server that cannot be reached is a `ServerUnreachable`, a subclass.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from abi_tui.backoff import Backoff
from abi_tui.net.sse import LineSplitter, SseDecoder

if TYPE_CHECKING:
    import aiohttp

    from abi_tui.net.http_client import HttpStreams

# Event types the client makes up for the events iterator: the connection's own state.
CONNECTION_OPEN = "connection.open"
CONNECTION_LOST = "connection.lost"


class ClientError(Exception):
    """A request the server refused or could not do; `message` is the server's own words."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 type: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.type = type
        self.param = param


class ServerUnreachable(ClientError):
    """No answer at all: refused, reset, timed out, or not an abi server."""


# --------------------------------------------------------------------------------- records
def _pick(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return {k: v for k, v in data.items() if k in names}


@dataclass
class Health:
    """`GET /health`: 200 ready / no_model / error, 503 while a model loads (not an error)."""

    status: str = "ok"
    state: str = "no_model"
    model: str | None = None
    active_streams: int = 0
    queued: int = 0
    uptime_s: float = 0.0
    version: str = ""
    context_per_request: int | None = None
    parallel: int | None = None
    auth: str = "none"
    error: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Health:
        return cls(**_pick(cls, data))


@dataclass
class MemoryEstimate:
    n_ctx: int = 0
    weights_bytes: int = 0
    kv_cache_bytes: int = 0
    total_bytes: int = 0


@dataclass
class ModelEntry:
    """One cached model as `/api/models` lists it (the CLI's `abi model list` columns)."""

    name: str
    path: str = ""
    source: str = "abi"
    size: int = 0
    quant: str | None = None
    params: int | None = None
    context_length: int | None = None
    architecture: str | None = None
    embedding: bool = False  # an embedding model (vector_store.embedding_model), not a chat model
    loaded: bool = False
    spec: str | None = None
    repo: str | None = None
    url: str | None = None
    revision: str | None = None
    verified: bool = False
    downloaded_at: str | None = None
    files: list[str] = field(default_factory=list)
    gguf: dict[str, Any] | None = None
    memory_estimate: MemoryEstimate | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelEntry:
        values = _pick(cls, data)
        estimate = data.get("memory_estimate")
        values["memory_estimate"] = MemoryEstimate(**_pick(MemoryEstimate, estimate)) if isinstance(estimate, dict) else None
        return cls(**values)

    def estimated_bytes(self, n_ctx: int | None = None) -> int:
        """Weights + f16 KV cache at n_ctx: the server's estimate when it sent one, else the
        same formula from the GGUF summary in the listing (so a list needs no extra requests)."""
        if self.memory_estimate is not None and self.memory_estimate.total_bytes:
            return self.memory_estimate.total_bytes
        g = self.gguf or {}
        weights = int(g.get("weights_bytes") or self.size or 0)
        layers = int(g.get("layers") or 0)
        if not n_ctx or not layers:
            return weights
        n_ctx = min(n_ctx, int(g.get("context_length") or n_ctx))
        heads = int(g.get("head_count") or 0)
        head_dim = int(g.get("embedding_size") or 0) // heads if heads else 0
        key_len = int(g.get("key_length") or head_dim)
        value_len = int(g.get("value_length") or head_dim)
        per_layer = list(g.get("kv_heads_per_layer") or []) or [int(g.get("head_count_kv") or heads)] * layers
        kv = sum(int(h) * (key_len + value_len) for h in per_layer[:layers]) * n_ctx * 2
        return weights + kv


@dataclass
class DownloadProgress:
    """One progress event of a model pull."""

    state: str = "queued"
    downloaded: int = 0
    total: int | None = None
    rate_bps: float = 0.0
    eta_s: float | None = None
    id: str | None = None
    name: str = ""
    spec: str = ""
    file: str = ""
    files_done: int = 0
    files_total: int = 0
    message: str | None = None
    error: str | None = None
    error_code: str | None = None
    path: str | None = None

    TERMINAL = frozenset({"done", "failed", "cancelled"})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DownloadProgress:
        return cls(**_pick(cls, data))

    @property
    def terminal(self) -> bool:
        return self.state in self.TERMINAL

    @property
    def fraction(self) -> float | None:
        return self.downloaded / self.total if self.total else None


@dataclass
class HubQuant:
    quant: str
    size: int = 0
    files: int = 1
    spec: str = ""


@dataclass
class HubResult:
    repo: str
    downloads: int | None = None
    likes: int | None = None
    updated: str | None = None
    quants: list[HubQuant] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HubResult:
        values = _pick(cls, data)
        values["quants"] = [HubQuant(**_pick(HubQuant, q)) for q in data.get("quants") or []]
        return cls(**values)


@dataclass
class ReloadResult:
    status: str = "ok"
    previous_model: str | None = None
    model: str | None = None
    load_ms: float = 0.0
    drained: int = 0
    cancelled: int = 0
    resident: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReloadResult:
        return cls(**_pick(cls, data))


@dataclass
class ServerEvent:
    """One `/api/events` event, or a CONNECTION_OPEN / CONNECTION_LOST made up by the client.
    `replayed` marks history sent on (re)connect before the server's live `hello`."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    ts: float | None = None
    replayed: bool = False


@dataclass
class StreamEvent:
    """A chat stream message: start, token, end, error or cancelled."""

    type: str
    request_id: str | None = None
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------- parsing
def error_from_body(status: int, body: Any, fallback: str) -> ClientError:
    """The OpenAI error object (`{"error": {...}}`) as a ClientError."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return ClientError(str(error.get("message") or fallback), status=status, code=error.get("code"),
                           type=error.get("type"), param=error.get("param"))
    if isinstance(error, str):
        return ClientError(error, status=status)
    return ClientError(fallback, status=status)


def connection_reason(exc: BaseException) -> str:
    """A short reason for a failed connection ("connection refused", "timed out"), without
    aiohttp's repetition of host and port."""
    import aiohttp  # deferred: `abi dash` paints its first frame before it needs the network
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        exc = exc.os_error
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError | aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "the connection was closed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.split(" (")[0].split(" ('")[0].lower()
    return str(exc) or type(exc).__name__


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format -> {sample name: [(labels, value)]}; only what the UI shows."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


# --------------------------------------------------------------------------------- client
class AbiClient:
    """`AbiClient(url, token)`; one aiohttp session, opened on first use, `close()` at the end."""

    def __init__(self, url: str, token: str | None = None, *, admin_token: str | None = None,
                 timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.admin_token = admin_token or token
        self.timeout_s = timeout_s
        self._http: HttpStreams | None = None

    # -- plumbing -------------------------------------------------------------------------
    def _headers(self, admin: bool = False) -> dict[str, str]:
        token = self.admin_token if admin else self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    @property
    def http(self) -> HttpStreams:
        if self._http is None:
            import aiohttp  # deferred: `abi dash` paints its first frame before it needs the network

            from abi_tui.net.http_client import HttpStreams
            # No total timeout: streams (events, pulls, chat) are long; each call sets its own.
            self._http = HttpStreams(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        return self._http

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session under `http` (WebSockets)."""
        return self.http.session

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def __aenter__(self) -> AbiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _unreachable(self, exc: BaseException) -> ServerUnreachable:
        return ServerUnreachable(f"cannot reach the server at {self.url}: {connection_reason(exc)}")

    async def request(self, method: str, path: str, *, json_body: Any = None, admin: bool = False,
                      timeout_s: float | None = None, ok_statuses: tuple[int, ...] = ()) -> Any:
        """One JSON request; raises ClientError with the server's message on an error status."""
        import aiohttp  # deferred: `abi dash` paints its first frame before it needs the network
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        try:
            async with await self.http.open(method, self.url + path, json=json_body, timeout=timeout,
                                            headers=self._headers(admin)) as response:
                try:
                    body = await response.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    body = None
                if response.status >= 400 and response.status not in ok_statuses:
                    raise error_from_body(response.status, body,
                                          f"{method} {path} failed: {response.status} {response.reason}")
                return body
        except ClientError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from None

    # -- system -----------------------------------------------------------------------------
    async def health(self) -> Health:
        body = await self.request("GET", "/health", timeout_s=3.0, ok_statuses=(503,))
        if not isinstance(body, dict) or "state" not in body:
            raise ServerUnreachable(f"{self.url} answered, but not as an abi server (no state in /health)")
        return Health.from_dict(body)

    async def openai_models(self) -> list[dict[str, Any]]:
        body = await self.request("GET", "/v1/models")
        return list(body.get("data") or []) if isinstance(body, dict) else []

    async def telemetry(self, history: int = 0) -> dict[str, Any]:
        body = await self.request("GET", f"/api/telemetry?history={int(history)}")
        return body if isinstance(body, dict) else {}

    async def _get_text(self, path: str, what: str) -> str:
        """GET a text (not JSON) resource; errors arrive as the usual OpenAI error objects."""
        import aiohttp  # deferred: `abi dash` paints its first frame before it needs the network
        try:
            async with await self.http.open("GET", self.url + path, headers=self._headers(),
                                            timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as response:
                text = await response.text()
                if response.status >= 400:
                    try:
                        body = json.loads(text)
                    except ValueError:
                        body = None
                    raise error_from_body(response.status, body, f"{what} failed: {response.status}")
                return text
        except ClientError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from None

    async def metrics_text(self) -> str:
        return await self._get_text("/metrics", "GET /metrics")

    async def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        return parse_prometheus(await self.metrics_text())

    # -- models -----------------------------------------------------------------------------
    async def models(self) -> list[ModelEntry]:
        """Cached models, the loaded ones marked."""
        body = await self.request("GET", "/api/models", timeout_s=30.0)
        items = body.get("data", body.get("models")) if isinstance(body, dict) else body
        return [ModelEntry.from_dict(item) for item in items or [] if isinstance(item, dict)]

    async def model_info(self, name: str) -> ModelEntry:
        """All metadata of one cached model plus its memory estimate at the server's n_ctx."""
        body = await self.request("GET", f"/api/models/{quote(name, safe='')}", timeout_s=30.0)
        return ModelEntry.from_dict(body if isinstance(body, dict) else {})

    async def search(self, query: str, *, limit: int = 10, sort: str = "downloads") -> list[HubResult]:
        """GGUF repos on the hub with their quant files and sizes (`GET /api/models/search`;
        a server without it answers 404/405, which the UI reports)."""
        body = await self.request("GET", f"/api/models/search?q={quote(query)}&limit={int(limit)}&sort={quote(sort)}",
                                  timeout_s=60.0)
        items = body.get("data", body.get("results")) if isinstance(body, dict) else body
        return [HubResult.from_dict(item) for item in items or [] if isinstance(item, dict)]

    async def pull(self, spec: str, *, quant: str | None = None, sha256: str | None = None,
                   verify: bool = True) -> AsyncIterator[DownloadProgress]:
        """Download a model; yields progress until a terminal state (done, failed, cancelled).
        Refusals before the stream starts (bad spec, offline hub) raise ClientError. Leaving the
        loop early stops following, not the download (the server keeps going)."""
        import aiohttp  # deferred: `abi dash` paints its first frame before it needs the network
        payload: dict[str, Any] = {"model": spec, "verify": verify}
        if quant:
            payload["quant"] = quant
        if sha256:
            payload["sha256"] = sha256
        try:
            async with await self.http.open("POST", self.url + "/api/models/pull", json=payload,
                                            headers=self._headers(),
                                            timeout=aiohttp.ClientTimeout(total=None, sock_read=120)) as response:
                if response.status >= 400:
                    try:
                        body = await response.json(content_type=None)
                    except ValueError:
                        body = None
                    raise error_from_body(response.status, body, f"pull failed: {response.status}")
                download_id = response.headers.get("X-Download-Id")
                last = DownloadProgress(id=download_id, spec=spec, name=spec)
                async for item in self._json_stream(response):
                    if "error" in item and "state" not in item:
                        # The stream's last word when the download did not finish: a terminal
                        # progress event like the others, so callers need one code path.
                        error = error_from_body(response.status, item, "download failed")
                        state = "cancelled" if error.code == "download_cancelled" else "failed"
                        yield DownloadProgress(state=state, id=last.id or download_id, spec=last.spec, name=last.name,
                                               downloaded=last.downloaded, total=last.total, files_done=last.files_done,
                                               files_total=last.files_total, error=error.message if state == "failed" else None,
                                               error_code=error.code, message=error.message if state == "cancelled" else None)
                        return
                    last = DownloadProgress.from_dict(item)
                    yield last
                    if last.terminal:
                        return
        except ClientError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from None

    async def _json_stream(self, response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
        """JSON objects from an SSE (`data:` lines) or NDJSON body, whichever the server sent."""
        sse = "text/event-stream" in response.headers.get("Content-Type", "")
        events = SseDecoder()
        lines = LineSplitter()
        async for chunk in response.content.iter_any():
            if sse:
                texts = [event.data for event in events.feed(chunk)]
            else:
                texts = [line.decode("utf-8", "replace") for line in lines.feed(chunk)]
            for text in texts:
                if sse and text == "[DONE]":
                    return
                if text.strip():
                    try:
                        item = json.loads(text)
                    except ValueError:
                        continue
                    if isinstance(item, dict):
                        yield item

    async def downloads(self) -> list[DownloadProgress]:
        """Downloads the server is running now (started by any client)."""
        body = await self.request("GET", "/api/models/downloads")
        items = body.get("data") if isinstance(body, dict) else body
        return [DownloadProgress.from_dict(item) for item in items or [] if isinstance(item, dict)]

    async def download_action(self, download_id: str, action: str) -> DownloadProgress:
        """`pause`, `resume` or `cancel` a running download; returns its progress after that."""
        if action not in ("pause", "resume", "cancel"):
            raise ValueError("action must be pause, resume or cancel")
        body = await self.request("POST", f"/api/models/downloads/{quote(download_id, safe='')}/{action}")
        return DownloadProgress.from_dict(body if isinstance(body, dict) else {})

    async def delete_model(self, name: str) -> dict[str, Any]:
        body = await self.request("DELETE", f"/api/models/{quote(name, safe='')}")
        return body if isinstance(body, dict) else {}

    async def reload(self, model: str, *, drain_timeout_s: float = 30.0, force: bool = False,
                     n_ctx: int | None = None, n_gpu_layers: int | None = None) -> ReloadResult:
        """Hot swap. Progress arrives as reload.* events on `events()`."""
        payload: dict[str, Any] = {"model": model, "drain_timeout_s": drain_timeout_s, "force": force}
        if n_ctx is not None:
            payload["n_ctx"] = n_ctx
        if n_gpu_layers is not None:
            payload["n_gpu_layers"] = n_gpu_layers
        body = await self.request("POST", "/admin/reload", json_body=payload, admin=True,
                                  timeout_s=drain_timeout_s + 600)
        return ReloadResult.from_dict(body if isinstance(body, dict) else {})

    # -- events -----------------------------------------------------------------------------
    async def events(self, *, since: str | int | None = "all", reconnect: bool = True,
                     backoff: Backoff | None = None,
                     skip: Callable[[str], bool] | None = None) -> AsyncIterator[ServerEvent]:
        """Server events forever, reconnecting with backoff.

        Besides the server's events it yields CONNECTION_OPEN when a connection is up and
        CONNECTION_LOST (data: error, retry_in_s) when it goes, so one loop sees everything.
        `since` asks for the server's kept history first (marked `replayed`). On a reconnect
        the history is asked for again: ids restart with a restarted server, so `?since=<last
        id>` could skip its first events; events already seen (same id and time) are dropped.
        `skip(type)` drops events before they are decoded (telemetry samples are frequent).
        """
        import aiohttp  # deferred: `abi dash` paints its first frame before it needs the network
        backoff = backoff or Backoff()
        seen: deque[tuple[Any, Any]] = deque(maxlen=1000)
        while True:
            query = "" if since is None else f"?since={since}"
            error: str | None = None
            try:
                async with await self.http.open("GET", self.url + "/api/events" + query, headers=self._headers(),
                                                timeout=aiohttp.ClientTimeout(total=None, sock_connect=3)) as response:
                    if response.status >= 400:
                        try:
                            body = await response.json(content_type=None)
                        except ValueError:
                            body = None
                        raise error_from_body(response.status, body, f"/api/events: {response.status}")
                    backoff.reset()
                    yield ServerEvent(CONNECTION_OPEN, {"url": self.url})
                    decoder = SseDecoder()
                    live = False
                    async for chunk in response.content.iter_any():
                        for frame in decoder.feed(chunk):
                            kind = frame.type
                            if kind == "hello":
                                live = True
                                continue
                            if skip is not None and skip(kind):
                                continue
                            try:
                                item = json.loads(frame.data)
                            except ValueError:
                                continue
                            if not isinstance(item, dict):
                                continue
                            event = ServerEvent(str(item.get("type", kind)), item.get("data") or {},
                                                item.get("id"), item.get("ts"), replayed=not live)
                            if event.id is not None:
                                if not live and (event.id, event.ts) in seen:
                                    continue
                                seen.append((event.id, event.ts))
                            yield event
                    error = "the server closed the event stream"
            except ClientError as exc:
                if exc.status in (401, 403):
                    raise  # a wrong token does not fix itself by retrying
                error = exc.message
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                error = self._unreachable(exc).message
            if not reconnect:
                raise ServerUnreachable(error or "event stream ended")
            delay = backoff.next()
            yield ServerEvent(CONNECTION_LOST, {"error": error, "retry_in_s": round(delay, 2)})
            await asyncio.sleep(delay)

    # -- chat streaming ---------------------------------------------------------------------
    def stream(self, body: dict[str, Any], *, transport: str = "ws") -> ChatStream:
        """A chat/completion stream (`prompt` or `messages`, model, persona, sampling...):
        `async with client.stream(body) as s: async for event in s: ...`; `await s.cancel()`."""
        return ChatStream(self, body, transport)

    # -- persona chat and conversations -------------------------------------------
    def chat(self, content: str, *, persona: str | None = None, conversation_id: str | None = None,
             **options: Any) -> PersonaChatStream:
        """One persona turn over `POST /api/v1/chat[/{persona}]` (SSE): `persona` None or "auto"
        lets the router decide (an `@abi`/`@abbey`/`@aviva` prefix in `content` still forces);
        `options` are extra body fields (max_tokens, temperature, model...). The server saves
        the turn in `conversation_id`, or starts a conversation and names it in the context event."""
        body: dict[str, Any] = {"content": content, "stream": True, **options}
        if conversation_id:
            body["conversation_id"] = conversation_id
        return PersonaChatStream(self, body, persona)

    async def personas(self) -> list[dict[str, Any]]:
        """The persona catalogue: id, name, role, description, colour, sampling."""
        body = await self.request("GET", "/api/v1/personas")
        return [p for p in (body.get("personas") or []) if isinstance(p, dict)] if isinstance(body, dict) else []

    async def route(self, content: str, *, previous: str | None = None) -> RouteDecision:
        """The router's decision for a message, without generating (`POST /api/v1/personas/route`)."""
        payload: dict[str, Any] = {"content": content}
        if previous:
            payload["previous"] = previous
        body = await self.request("POST", "/api/v1/personas/route", json_body=payload)
        return RouteDecision.from_dict(body if isinstance(body, dict) else {})

    async def conversations(self) -> list[ConversationInfo]:
        """Saved conversations, the most recently updated first."""
        body = await self.request("GET", "/api/v1/conversations")
        items = body.get("conversations") if isinstance(body, dict) else body
        return [ConversationInfo.from_dict(c) for c in items or [] if isinstance(c, dict)]

    async def create_conversation(self, title: str | None = None) -> ConversationInfo:
        body = await self.request("POST", "/api/v1/conversations", json_body={"title": title} if title else {})
        return ConversationInfo.from_dict(body if isinstance(body, dict) else {})

    async def conversation(self, conversation_id: str) -> tuple[ConversationInfo, list[ChatMessage]]:
        """One conversation with its messages, oldest first."""
        body = await self.request("GET", f"/api/v1/conversations/{quote(conversation_id, safe='')}")
        body = body if isinstance(body, dict) else {}
        messages = [ChatMessage.from_dict(m) for m in body.get("messages") or [] if isinstance(m, dict)]
        return ConversationInfo.from_dict(body), messages

    async def rename_conversation(self, conversation_id: str, title: str) -> ConversationInfo:
        body = await self.request("PATCH", f"/api/v1/conversations/{quote(conversation_id, safe='')}",
                                  json_body={"title": title})
        return ConversationInfo.from_dict(body if isinstance(body, dict) else {})

    async def delete_conversation(self, conversation_id: str) -> None:
        await self.request("DELETE", f"/api/v1/conversations/{quote(conversation_id, safe='')}")

    async def export_conversation(self, conversation_id: str) -> str:
        """The conversation as Markdown (the server's export: titles, personas, routing, timings)."""
        return await self._get_text(f"/api/v1/conversations/{quote(conversation_id, safe='')}/export", "export")

    # -- memory -----------------------------------------------------------------------------
    async def memories(self, *, limit: int = 50, offset: int = 0, conversation_id: str | None = None,
                       contains: str | None = None) -> tuple[list[MemoryInfo], int]:
        """Remembered items, newest first, and how many match in all."""
        query = {"limit": str(limit), "offset": str(offset)}
        if conversation_id:
            query["conversation_id"] = conversation_id
        if contains:
            query["contains"] = contains
        body = await self.request("GET", "/api/v1/memory?" + urlencode(query))
        return [MemoryInfo.from_dict(i) for i in body.get("items", [])], int(body.get("total", 0))

    async def memory_status(self) -> dict[str, Any]:
        """state (lexical, ready, no_embedding_model, error), embedding_model, dedicated (a
        configured embedding model rather than the chat model), total items."""
        body = await self.request("GET", "/api/v1/memory?limit=1")
        return {k: v for k, v in body.items() if k != "items"}

    async def recall(self, query: str, *, k: int = 5, mode: str = "fused") -> list[MemoryInfo]:
        """What memory would bring into the prompt for this message."""
        body = await self.request("GET", "/api/v1/memory/search?" + urlencode({"q": query, "k": k, "mode": mode}))
        return [MemoryInfo.from_dict(h) for h in body.get("hits", [])]

    async def forget_memory(self, item_id: str) -> None:
        await self.request("DELETE", f"/api/v1/memory/{quote(item_id, safe='')}")

    async def reembed_memory(self) -> AsyncIterator[dict[str, Any]]:
        """Embed every item the current embedding model lacks: yields {done, total} as it goes,
        then {added, model}; a failure raises ClientError."""
        import aiohttp  # deferred: `abi dash` paints its first frame before it needs the network
        try:
            async with await self.http.open("POST", self.url + "/api/v1/memory/reembed", headers=self._headers(),
                                            timeout=aiohttp.ClientTimeout(total=None, sock_read=300)) as response:
                if response.status >= 400:
                    try:
                        body = await response.json(content_type=None)
                    except ValueError:
                        body = None
                    raise error_from_body(response.status, body, f"re-embedding failed: {response.status}")
                async for item in self._json_stream(response):
                    if "error" in item:
                        raise error_from_body(500, item, "re-embedding failed")
                    yield item
        except ClientError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from None


class ChatStream:
    """One generation over the WebSocket (`/api/stream/ws`) or SSE (`/api/stream`)."""

    def __init__(self, client: AbiClient, body: dict[str, Any], transport: str) -> None:
        if transport not in ("ws", "sse"):
            raise ValueError("transport must be 'ws' or 'sse'")
        self.client = client
        self.body = dict(body)
        self.body.setdefault("request_id", f"ui-{uuid.uuid4().hex[:16]}")
        self.request_id: str = self.body["request_id"]
        self.transport = transport
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> ChatStream:
        import aiohttp  # deferred: `abi dash` paints its first frame before it needs the network
        client = self.client
        try:
            if self.transport == "ws":
                self._ws = await client.session.ws_connect(client.url + "/api/stream/ws", headers=client._headers(),
                                                           heartbeat=30.0)
                await self._ws.send_str(json.dumps({"type": "request", **self.body}))
            else:
                self._response = await client.http.open("POST", client.url + "/api/stream", json=self.body,
                                                        headers=client._headers())
                if self._response.status >= 400:
                    try:
                        body = await self._response.json(content_type=None)
                    except ValueError:
                        body = None
                    status = self._response.status
                    self._response.release()
                    raise error_from_body(status, body, f"stream failed: {status}")
        except ClientError:
            raise
        except aiohttp.WSServerHandshakeError as exc:
            raise ClientError(f"WebSocket refused: {exc.status} {exc.message}", status=exc.status) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise client._unreachable(exc) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._response is not None:
            self._response.release()

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._ws_events() if self.transport == "ws" else self._sse_events()

    async def cancel(self) -> None:
        """Stop the generation (the server stops within one token)."""
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_str(json.dumps({"type": "cancel", "request_id": self.request_id}))
        elif self._response is not None:
            self._response.close()  # the server cancels a stream whose client went away

    async def _ws_events(self) -> AsyncIterator[StreamEvent]:
        import aiohttp  # deferred: `abi dash` paints its first frame before it needs the network
        assert self._ws is not None
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            try:
                data = json.loads(message.data)
            except ValueError:
                continue
            kind = str(data.get("type", ""))
            event = StreamEvent(kind, data.get("request_id"), data.get("text", "") if kind == "token" else "", data)
            yield event
            if kind in ("end", "error", "cancelled") and data.get("request_id") in (None, self.request_id):
                return

    async def _sse_events(self) -> AsyncIterator[StreamEvent]:
        import aiohttp  # deferred: `abi dash` paints its first frame before it needs the network
        assert self._response is not None
        decoder = SseDecoder()
        try:
            async for chunk in self._response.content.iter_any():
                for frame in decoder.feed(chunk):
                    kind = (frame.event or "").removeprefix("abi.")
                    try:
                        data = json.loads(frame.data)
                    except ValueError:
                        continue
                    yield StreamEvent(kind, data.get("request_id", self.request_id),
                                      data.get("text", "") if kind == "token" else "", data)
                    if kind in ("end", "error"):
                        return
        except (aiohttp.ClientError, OSError) as exc:
            if self._response.closed:  # we cancelled
                yield StreamEvent("cancelled", self.request_id)
                return
            raise self.client._unreachable(exc) from None


# --------------------------------------------------------------------------------- persona chat
@dataclass
class RouteDecision:
    """The router's choice for one message; `content` is the message without an
    `@persona` prefix."""

    persona: str = "abbey"
    confidence: float = 0.0
    reason: str = ""
    content: str = ""
    scores: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RouteDecision:
        return cls(**_pick(cls, data))


@dataclass
class ConversationInfo:
    id: str = ""
    title: str = ""
    created: float = 0.0
    updated: float = 0.0
    message_count: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversationInfo:
        return cls(**_pick(cls, data))


@dataclass
class ChatMessage:
    """A saved message. `status` of an answer: streaming, done, or (cut off, partial text kept)
    incomplete, cancelled, error."""

    id: int = 0
    role: str = "user"
    content: str = ""
    persona: str | None = None
    routing: dict[str, Any] | None = None
    model: str | None = None
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    total_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    status: str = "done"
    finish_reason: str | None = None
    error: str | None = None
    created: float = 0.0

    INCOMPLETE = frozenset({"incomplete", "cancelled", "error"})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatMessage:
        return cls(**_pick(cls, data))

    @property
    def incomplete(self) -> bool:
        return self.status in self.INCOMPLETE


@dataclass
class MemoryInfo:
    """A remembered item: a sentence a user said (`fact`) or a span of an answer (`answer`), with
    the conversation it came from; a recalled one also has its `score` and `sources`."""

    id: str = ""
    conversation_id: str = ""
    role: str = "user"
    kind: str = "fact"
    text: str = ""
    created: float = 0.0
    message_id: int | None = None
    persona: str | None = None
    score: float | None = None
    similarity: float | None = None
    sources: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryInfo:
        return cls(**_pick(cls, data))


class PersonaChatStream(ChatStream):
    """A persona turn over SSE: events `start` (model, persona, routing), `context`
    (conversation_id, message_id, memory), `token`..., then `end` (usage, timings) or `error`.
    `cancel()` closes the response: the server stops generating and keeps the partial answer,
    marked cancelled."""

    def __init__(self, client: AbiClient, body: dict[str, Any], persona: str | None) -> None:
        super().__init__(client, body, "sse")
        self.body.pop("request_id", None)  # the server names persona turns (X-Request-Id)
        forced = persona if persona and persona != "auto" else None
        self.path = "/api/v1/chat" + (f"/{quote(forced, safe='')}" if forced else "")

    async def __aenter__(self) -> PersonaChatStream:
        import aiohttp  # deferred: `abi dash` paints its first frame before it needs the network
        client = self.client
        try:
            self._response = await client.http.open("POST", client.url + self.path, json=self.body,
                                                    headers=client._headers())
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise client._unreachable(exc) from None
        if self._response.status >= 400:
            try:
                body = await self._response.json(content_type=None)
            except ValueError:
                body = None
            status = self._response.status
            self._response.release()
            raise error_from_body(status, body, f"chat failed: {status}")
        self.request_id = self._response.headers.get("X-Request-Id", self.request_id)
        return self
