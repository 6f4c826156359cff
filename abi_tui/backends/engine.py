"""The inference engine: model ids to backends, admission, and the streams the server drains.

Model ids: `mock/<pattern>...` -> MockBackend; the active model's name, `default` or nothing ->
the active local model (503 `no_model_loaded` when none is loaded); any other name, path or
spec of a cached model -> that model, loaded into the pool. Remote backends register prefixes
in `remote_factories`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abi_tui.backends.base import Backend, CancelFlag, GenerationRequest, Prepared, TokenChannel
from abi_tui.backends.fixed_reply import FixedReply
from abi_tui.backends.mock import MockBackend
from abi_tui.backends.scheduler import ACTIVE_LANE, Lane, Scheduler, Ticket
from abi_tui.config import Settings
from abi_tui.errors import AbiError, InvalidRequest, ModelNotFound, NoModelLoaded, Unavailable

log = logging.getLogger(__name__)

NO_MODEL_MESSAGE = ("no model is loaded: start the server with --model NAME (`abi model list` shows the "
                    "cached models), or load one with POST /admin/reload {\"model\": NAME} (m in the "
                    "dashboard); mock/<pattern> names the timing mock")
PERSONA_IDS = ("auto", "abi", "abbey", "aviva")
HEARTBEAT = object()  # yielded by Stream.events() when nothing arrived within the heartbeat period

Publish = Callable[[str, dict[str, Any]], None]


def new_request_id(prefix: str = "req") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


@dataclass
class Target:
    """Where a model id leads: its lane in the scheduler and how to get its backend."""

    lane: str
    get_backend: Callable[[], Awaitable[Backend]]
    label: str


class Stream:
    """One generation: queued, then running, then closed. The server drains it."""

    def __init__(self, engine: InferenceEngine, target: Target, backend: Backend, prepared: Prepared,
                 ticket: Ticket) -> None:
        self.engine = engine
        self.target = target
        self.backend = backend
        self.prepared = prepared
        self.ticket = ticket
        self.cancel_flag = CancelFlag()
        self.channel = TokenChannel(asyncio.get_running_loop(),
                                    coalesce_s=engine.settings.server.stream_coalesce_ms / 1000)
        # A client far behind the generation stops it, as a disconnect would (bounded memory).
        self.channel.on_overflow = self.cancel_flag.set
        self.created_at = time.perf_counter()
        self.created_wall = time.time()
        self.started_at: float | None = None
        self.preface: str | None = None
        self.ended_at: float | None = None
        self.channel.on_close(self._on_close)

    @property
    def request(self) -> GenerationRequest:
        return self.prepared.request

    @property
    def model(self) -> str:
        return self.backend.model_id

    @property
    def prompt_tokens(self) -> int:
        usage = self.channel.usage
        return usage.prompt_tokens if usage is not None else self.prepared.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        usage = self.channel.usage
        return usage.completion_tokens if usage is not None else self.channel.completion_tokens

    @property
    def finish_reason(self) -> str | None:
        return self.channel.finish_reason

    @property
    def error(self) -> AbiError | None:
        return self.channel.error

    @property
    def queued(self) -> bool:
        return self.started_at is None and not self.channel.closed

    async def events(self, heartbeat_s: float | None) -> AsyncIterator[Any]:
        """Yield lists of text pieces (one list per wake-up) or HEARTBEAT; ends at close."""
        grant = self.ticket.granted
        while not grant.done():
            done, _ = await asyncio.wait({grant}, timeout=heartbeat_s)
            if not done:
                yield HEARTBEAT
        if grant.cancelled():
            return
        await self._begin()
        channel = self.channel
        while True:
            ready = await channel.wait(heartbeat_s)
            if not ready:
                yield HEARTBEAT
                continue
            pieces = channel.drain()
            if pieces:
                yield pieces
            if channel.done:
                return

    async def _begin(self) -> None:
        self.started_at = time.perf_counter()
        try:
            backend = await self.target.get_backend()
            if backend is not self.backend:  # a hot swap happened while this request waited
                self.prepared = await backend.prepare(self.prepared.request)
                self.backend = backend
            if self.preface:  # the server's own words first (not counted as generated tokens)
                self.channel.put(self.preface, count=False)
            backend.start(self.prepared, self.channel, self.cancel_flag)
        except AbiError as exc:
            self.channel.close(None, exc)

    async def collect(self) -> str:
        parts: list[str] = []
        async for item in self.events(None):
            parts.extend(item)
        return "".join(parts)

    def cancel(self) -> None:
        """Stop within one token (or leave the queue); safe to call more than once."""
        self.cancel_flag.set()
        self.channel.wake_producer()  # a producer waiting on backpressure must see the flag
        if not self.ticket.granted.done() or self.started_at is None:
            self.engine.scheduler.release(self.ticket)
            if not self.channel.closed:
                self.channel.close("cancelled")

    def _on_close(self) -> None:
        self.ended_at = time.perf_counter()
        self.engine.scheduler.release(self.ticket)
        self.engine.on_stream_end(self)

    def timings(self) -> dict[str, float]:
        end = self.ended_at or time.perf_counter()
        first = self.channel.first_token_at
        ttft = (first - self.created_at) * 1000 if first else None
        total = (end - self.created_at) * 1000
        gen_s = (end - first) if first else 0.0
        n = self.completion_tokens
        rate = (n - 1) / gen_s if n > 1 and gen_s > 0 else 0.0
        queue_ms = ((self.started_at or end) - self.created_at) * 1000
        return {"ttft_ms": round(ttft, 3) if ttft is not None else None, "total_ms": round(total, 3),
                "tokens_per_s": round(rate, 2), "queue_ms": round(queue_ms, 3)}


class InferenceEngine:
    def __init__(self, settings: Settings, publish: Publish | None = None) -> None:
        from abi_tui.backends.llamacpp import LlamaOptions
        from abi_tui.backends.pool import ModelPool

        self.settings = settings
        server = settings.server
        self.publish: Publish = publish or (lambda kind, data: None)
        self.scheduler = Scheduler(server.max_streams, server.max_queue)
        self.options = LlamaOptions(n_ctx=server.n_ctx, parallel=server.parallel,
                                    n_gpu_layers=server.n_gpu_layers, threads=server.threads,
                                    flash_attn=server.flash_attn)
        self.pool = ModelPool(self.options, max_loaded=server.max_loaded_models,
                              budget_bytes=server.pool_memory_budget, keep_alive_s=server.keep_alive_s,
                              publish=self._publish, is_busy=self._is_busy)
        self.mocks: dict[str, MockBackend] = {}
        self.active_name: str | None = None
        self.active_path: Path | None = None
        self.state = "no_model"
        self.last_error: str | None = None
        self.remote_factories: dict[str, Callable[[str], Backend]] = {}
        self.stream_listeners: list[Callable[[Stream], None]] = []
        # Called with the new active model's name (None: no model) on the event loop.
        self.active_listeners: list[Callable[[str | None], None]] = []
        self.streams: set[Stream] = set()
        self._lazy_spec: str | None = None
        self.reload_lock = asyncio.Lock()

    # --------------------------------------------------------------------------------- events
    def _publish(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "model.loading" and data.get("model") == self.active_name:
            self.state = "loading"
        self.publish(kind, data)

    def _is_busy(self, name: str) -> bool:
        lane = self.scheduler.lanes.get(name)
        active_busy = name == self.active_name and self.scheduler.lanes.get(ACTIVE_LANE)
        return bool((lane and lane.active) or (active_busy and active_busy.active))

    # --------------------------------------------------------------------------------- models
    def resolve_path(self, spec: str, *, trusted: bool = False) -> tuple[str, Path]:
        """A model spec to (name, GGUF path); raises ModelNotFound. Every model name that reaches
        a backend passes here. Only specs the user wrote (`--model`, config.toml) are `trusted`
        to name any file; a spec from an API client (requests, reload, persona chat, the pool)
        resolves only to the cache, the known stores and `server.model_dirs`, and a refused path
        gets the same 404 as a missing one (docs/SECURITY.md)."""
        resident = self.pool.get_resident(spec)
        if resident is not None:
            return spec, resident.path
        try:
            from abi_tui.models import (
                model_name_for_path,
                resolve_client_model,
                resolve_local_model,
            )
        except ImportError:  # the model cache package is optional for the engine
            resolve_local_model = resolve_client_model = model_name_for_path = None  # type: ignore[assignment]
        if resolve_local_model is not None:
            resolve = resolve_local_model if trusted else resolve_client_model
            try:
                path = resolve(spec, self.settings)
            except ModelNotFound as exc:
                exc.param = exc.param or "model"
                raise
            return model_name_for_path(path, self.settings), path
        path = Path(spec).expanduser()
        if trusted and path.is_file():
            return path.stem, path
        raise ModelNotFound(f"model {spec!r} not found: give a path to a .gguf file or a cached model name",
                            param="model")

    def set_lazy_default(self, spec: str | None) -> None:
        """The last used model, loaded on the first request that needs it."""
        self._lazy_spec = spec

    async def load_active(self, spec: str, *, trusted: bool = True) -> dict[str, Any]:
        """Make `spec` the active model (used at start-up with the model from the command line or
        config.toml, hence trusted; hot swaps go through admin reload)."""
        try:
            name, path = self.resolve_path(spec, trusted=trusted)
            self.state = "loading"
            backend = await self.pool.get(name, path, pin=True)
        except AbiError as exc:
            self.state = "error" if self.active_name is None else "ready"
            self.last_error = exc.message
            raise
        self.set_active(name, path)
        return {"model": name, "load_ms": round(backend.load_ms, 1)}

    def set_active(self, name: str | None, path: Path | None) -> None:
        if self.active_name and self.active_name != name:
            self.pool.pin(self.active_name, False)
        self.active_name, self.active_path = name, path
        if name:
            self.pool.pin(name, True)
        self.state = "ready" if name else "no_model"
        self.last_error = None if name else self.last_error
        for listener in self.active_listeners:
            try:
                listener(name)
            except Exception:
                log.exception("active-model listener failed")

    def active_backend(self) -> Backend | None:
        return self.pool.get_resident(self.active_name) if self.active_name else None

    async def _active(self) -> Backend:
        if self.active_name is None and self._lazy_spec:
            spec, self._lazy_spec = self._lazy_spec, None
            try:
                await self.load_active(spec)
            except AbiError as exc:
                log.warning("could not load the last used model %s: %s", spec, exc.message)
        if self.active_name is not None:
            backend = self.pool.get_resident(self.active_name)
            if backend is None:  # evicted or expired: bring it back
                backend = await self.pool.get(self.active_name, self.active_path, pin=True)
            self.pool.touch(self.active_name)
            return backend
        # Never a silent stand-in: the mock answers only when it is asked for by name.
        raise NoModelLoaded(NO_MODEL_MESSAGE)

    def _mock(self, model_id: str) -> MockBackend:
        backend = self.mocks.get(model_id)
        if backend is None:
            backend = MockBackend(model_id, capacity=self.settings.server.max_streams)
            if len(self.mocks) > 256:
                self.mocks.clear()
            self.mocks[model_id] = backend
        return backend

    def target(self, model_id: str | None) -> Target:
        if model_id is not None and not model_id.strip():
            model_id = None  # a blank name, like an empty one, means the default model
        if not model_id or model_id == "default" or model_id == self.active_name:
            return Target(ACTIVE_LANE, self._active, self.active_name or "default")
        if model_id.startswith("mock/"):
            backend = self._mock(model_id)

            async def get_mock() -> Backend:
                return backend
            return Target(model_id, get_mock, model_id)
        prefix = model_id.split("/", 1)[0]
        if prefix in self.remote_factories and "/" in model_id:
            backend_remote = self.remote_factories[prefix](model_id)

            async def get_remote() -> Backend:
                return backend_remote
            return Target(f"remote:{prefix}", get_remote, model_id)
        name, path = self.resolve_path(model_id)
        if name == self.active_name:
            return Target(ACTIVE_LANE, self._active, name)

        async def get_local() -> Backend:
            backend = await self.pool.get(name, path)
            self.pool.touch(name)
            return backend
        return Target(name, get_local, name)

    def _lane(self, target: Target, backend: Backend) -> Lane:
        def capacity() -> int:
            if target.lane == ACTIVE_LANE:
                current = self.active_backend()
                return current.capacity if current is not None else self.settings.server.max_streams
            return backend.capacity
        return self.scheduler.lane(target.lane, capacity)

    async def embedding_backend(self, model_id: str | None) -> Any:
        """The model that computes embeddings: the one named, the configured embedding model,
        else the active model. Never a download."""
        requested = (model_id or "").strip()
        spec = requested or self.settings.vector_store.embedding_model
        if spec and spec.startswith("mock/"):
            raise InvalidRequest("mock models do not compute embeddings; name a local GGUF model", param="model")
        if spec and spec not in ("default", self.active_name) and spec not in PERSONA_IDS:
            name, path = self.resolve_path(spec, trusted=not requested)  # config.toml's, or a client's
            return await self.pool.get(name, path)
        backend = await self._active()
        if not hasattr(backend, "embed"):
            raise Unavailable("no local model is loaded to compute embeddings: start with --model, "
                              "or set vector_store.embedding_model in config.toml", retry_after=5)
        return backend

    # --------------------------------------------------------------------------------- streams
    async def open(self, request: GenerationRequest, *, preface: str | None = None) -> Stream:
        """Validate and queue a request; raises AbiError (404, 400, 429) before anything is sent.
        `preface`: text streamed before the model's answer (not counted as generated)."""
        target = self.target(request.model)
        stream = await self._open(target, await target.get_backend(), request)
        stream.preface = preface
        return stream

    async def open_reply(self, request: GenerationRequest, text: str) -> Stream:
        """A reply the server writes itself (Abi's refusal): the request reaches no model."""
        backend = FixedReply(text)

        async def get_fixed() -> Backend:
            return backend
        return await self._open(Target("fixed", get_fixed, backend.model_id), backend, request)

    async def _open(self, target: Target, backend: Backend, request: GenerationRequest) -> Stream:
        prepared = await backend.prepare(request)
        if not request.request_id:
            request.request_id = new_request_id()
        ticket = self.scheduler.enqueue(self._lane(target, backend))
        stream = Stream(self, target, backend, prepared, ticket)
        self.streams.add(stream)
        return stream

    def on_stream_end(self, stream: Stream) -> None:
        self.streams.discard(stream)
        for listener in self.stream_listeners:
            try:
                listener(stream)
            except Exception:
                log.exception("stream listener failed")

    @property
    def active_streams(self) -> int:
        return self.scheduler.active

    @property
    def queued(self) -> int:
        return self.scheduler.queued

    def pause_active(self) -> Lane:
        lane = self.scheduler.lane(ACTIVE_LANE, lambda: self.settings.server.max_streams)
        self.scheduler.pause(lane)
        return lane

    def resume_active(self) -> None:
        lane = self.scheduler.lanes.get(ACTIVE_LANE)
        if lane is not None:
            self.scheduler.resume(lane)

    async def reload(self, spec: str, **options: Any) -> dict[str, Any]:
        from abi_tui.backends.reload import hot_reload

        return await hot_reload(self, spec, **options)

    async def close(self) -> None:
        for stream in list(self.streams):
            stream.cancel()
        await self.pool.close()
