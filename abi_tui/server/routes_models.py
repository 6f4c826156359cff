"""Model cache routes: the cached models, downloads with streamed progress (as Ollama's
pull streams them, here as SSE), removal; and what the dashboard needs beyond the core API,
since it reaches the server only through its API: one model's info, hub search, and the download
queue's controls (pause, resume, cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

from aiohttp import web

from abi_tui.errors import AbiError, InvalidRequest
from abi_tui.models import cache
from abi_tui.models.progress import DownloadProgress
from abi_tui.models.pull import DownloadHandle, active_downloads, find_download, start_download
from abi_tui.models.service import api_list_models, api_model_info, api_remove_model, api_search
from abi_tui.models.spec import parse_spec
from abi_tui.server.parse import read_json
from abi_tui.server.sse import DONE_FRAME, HEARTBEAT_FRAME, open_sse, sse_frame
from abi_tui.server.state import STATE, ServerState, state_of
from abi_tui.server.streaming import (
    ClientStalled,
    drop_connection,
    heartbeat_seconds,
    write_deadline,
)

SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
FOLLOWED = "models_followed_downloads"


def loaded_names(state: ServerState) -> set[str]:
    """Names (and the path) of the models the engine holds: those must not be removed."""
    engine = state.engine
    names = {entry["model"] for entry in engine.pool.summary()["models"]}
    if engine.active_name:
        names.add(engine.active_name)
    if getattr(engine, "active_path", None):
        names.add(str(engine.active_path))
    return names


def _follow(state: ServerState, handle: DownloadHandle) -> None:
    """Forward a download's progress to /api/events: every state change, bytes once a second."""
    followed: set[str] = state.services.setdefault(FOLLOWED, set())
    if handle.id in followed:
        return
    followed.add(handle.id)
    last = {"state": None, "at": 0.0}

    def publish(event: DownloadProgress) -> None:
        now = time.monotonic()
        if event.state != last["state"] or now - last["at"] >= 1.0:
            last["state"], last["at"] = event.state, now
            state.events.publish("model.download", {"id": handle.id, **event.to_dict()})
        if event.state.terminal:
            followed.discard(handle.id)

    handle.add_callback(publish)


async def list_models(request: web.Request) -> web.Response:
    state = state_of(request)
    models = await api_list_models(state.settings, loaded_names(state))
    downloads = [{"id": h.id, **h.progress.to_dict()} for h in active_downloads()]
    return web.json_response({"object": "list", "data": models, "downloads": downloads})


def _optional(body: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = body.get(key, default)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise InvalidRequest(f"'{key}' must be a {kind.__name__}", param=key)
    return value


async def pull(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    body = await read_json(request, state.settings.server.max_body_bytes)
    spec = body.get("model", body.get("name"))
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidRequest("'model' is required: owner/repo:QUANT, owner/repo/file.gguf, hf://... or a URL",
                             param="model")
    quant = _optional(body, "quant", str)
    sha256 = _optional(body, "sha256", str)
    if sha256 is not None and not SHA256_RE.match(sha256):
        raise InvalidRequest("'sha256' must be 64 hexadecimal digits", param="sha256")
    verify = _optional(body, "verify", bool, True) is not False  # null means the default
    stream = _optional(body, "stream", bool, True) is not False
    parsed = parse_spec(spec).with_quant(quant)
    if parsed.kind not in ("hub", "url"):
        raise InvalidRequest(f"{spec!r} is not something to download: use owner/repo:QUANT, owner/repo/file.gguf, "
                             "hf://... or an https:// URL", param="model")
    handle = start_download(state.settings, spec.strip(), quant=quant, sha256=sha256, verify=verify)
    _follow(state, handle)
    if not stream:
        model = await handle.wait()
        return web.json_response({"status": "success", "id": handle.id, "model": model.to_dict()})
    return await _stream_progress(request, handle)


async def _stream_progress(request: web.Request, handle: DownloadHandle) -> web.StreamResponse:
    """`event: progress` frames until `event: done` (with the model) or an error object, then
    [DONE]. A client that goes away stops following; the download goes on (pull it again to
    follow it, or cancel it through /api/models/downloads/{id}/cancel)."""
    response = await open_sse(request, headers={"X-Download-Id": handle.id})
    heartbeat = heartbeat_seconds(request)
    deadline = write_deadline(request)
    queue: asyncio.Queue[DownloadProgress] = asyncio.Queue()

    async def pump() -> None:
        async for event in handle.events():
            queue.put_nowait(event)

    pumping = asyncio.create_task(pump())
    try:
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), heartbeat)
            except TimeoutError:
                await deadline.write(response, HEARTBEAT_FRAME)
                continue
            data = {"id": handle.id, **event.to_dict()}
            if not event.state.terminal:
                await deadline.write(response, sse_frame(data, event="progress"))
                continue
            model, error = await handle.outcome()
            if model is not None:
                await deadline.write(response, sse_frame({**data, "model": model.to_dict()}, event="done"))
            else:
                payload = error.to_dict() if isinstance(error, AbiError) else {
                    "error": {"message": event.error or event.message or event.state.value, "type": "server_error",
                              "param": None, "code": event.error_code or event.state.value}}
                await deadline.write(response, sse_frame(payload, event="error"))
            await deadline.write(response, DONE_FRAME)
            break
    except ClientStalled:
        await drop_connection(request, response)  # stopped reading; the download carries on
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the client left; the download carries on
    finally:
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pumping
    return response


async def info(request: web.Request) -> web.Response:
    state = state_of(request)
    return web.json_response(await api_model_info(state.settings, request.match_info["name"], loaded_names(state)))


async def search(request: web.Request) -> web.Response:
    query = request.query.get("q", request.query.get("query", ""))
    try:
        limit = int(request.query.get("limit", "10"))
    except ValueError:
        raise InvalidRequest("'limit' must be an integer", param="limit") from None
    if not 1 <= limit <= 100:
        raise InvalidRequest("'limit' must be from 1 to 100", param="limit")
    sort = request.query.get("sort", "downloads")
    if sort not in ("downloads", "likes", "updated"):
        raise InvalidRequest("'sort' must be downloads, likes or updated", param="sort")
    return web.json_response({"object": "list", "data": await api_search(query, limit=limit, sort=sort)})


async def remove(request: web.Request) -> web.Response:
    state = state_of(request)
    result = await api_remove_model(state.settings, request.match_info["name"], loaded_names(state))
    state.events.publish("model.removed", result)
    return web.json_response(result)


async def downloads(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": h.id, **h.progress.to_dict()}
                                                          for h in active_downloads()]})


async def control(request: web.Request) -> web.Response:
    handle = find_download(request.match_info["id"])
    if handle is None:
        raise AbiError(f"no download {request.match_info['id']!r} is running", status=404, code="download_not_found")
    action = request.match_info["action"]
    {"pause": handle.pause, "resume": handle.resume, "cancel": handle.cancel}[action]()
    await asyncio.sleep(0)  # let the download task see the request
    return web.json_response({"id": handle.id, "action": action, **handle.progress.to_dict()})


def _document() -> None:
    """The download-queue routes are this module's addition to the core API: describe them in
    /openapi.json next to the rest."""
    from abi_tui.server import openapi

    openapi.OPERATIONS.setdefault("/api/models/search", {
        "get": openapi._op("Search the hub for GGUF repos with their quants and sizes", errors=(400, 401, 502, 503),
                           params=[{"name": "q", "in": "query", "schema": openapi.STRING},
                                   {"name": "limit", "in": "query",
                                    "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                                   {"name": "sort", "in": "query", "schema": {
                                       "type": "string", "enum": ["downloads", "likes", "updated"]}}])})
    openapi.OPERATIONS.setdefault("/api/models/{name}", {}).setdefault("get", openapi._op(
        "A cached model's metadata and memory estimate", errors=(401, 404), params=[openapi._path_param("name")]))
    openapi.OPERATIONS.setdefault("/api/models/downloads", {
        "get": openapi._op("Downloads in progress with their progress events", errors=(401,))})
    openapi.OPERATIONS.setdefault("/api/models/downloads/{id}/{action}", {
        "post": openapi._op("Pause, resume or cancel a download", errors=(401, 404),
                            params=[openapi._path_param("id"),
                                    {**openapi._path_param("action"),
                                     "schema": {"type": "string", "enum": ["pause", "resume", "cancel"]}}])})


def setup(app: web.Application) -> None:
    _document()
    state = app[STATE]
    # /v1/models lists the cache through this (called in a thread).
    state.services.setdefault("list_models", lambda settings: [
        m.to_dict() for m in cache.list_models(settings, loaded=loaded_names(state))])
    app.router.add_get("/api/models", list_models)
    app.router.add_post("/api/models/pull", pull)
    app.router.add_get("/api/models/downloads", downloads)
    app.router.add_get("/api/models/search", search)
    app.router.add_post("/api/models/downloads/{id}/{action:pause|resume|cancel}", control)
    # Last: a model name may contain slashes (owner/repo:QUANT), but not be one of the routes
    # above (else DELETE /api/models/downloads would try to remove a model called "downloads").
    name = "{name:(?!(?:downloads|search|pull)(?:/|$)).+}"
    app.router.add_get(f"/api/models/{name}", info)
    app.router.add_delete(f"/api/models/{name}", remove)
