"""Health, Prometheus metrics, the OpenAPI document and the server event stream."""

from __future__ import annotations

import asyncio

from aiohttp import web

from abi_tui.errors import InvalidRequest
from abi_tui.server.events import CLOSED
from abi_tui.server.openapi import openapi_document
from abi_tui.server.sse import HEARTBEAT_FRAME, open_sse, sse_frame
from abi_tui.server.state import state_of
from abi_tui.server.streaming import (
    ClientStalled,
    drop_connection,
    heartbeat_seconds,
    write_deadline,
)


async def health(request: web.Request) -> web.Response:
    state = state_of(request)
    engine = state.engine
    backend = engine.active_backend()
    body = {
        "status": "ok" if engine.state != "error" else "error",
        "state": engine.state,
        "model": engine.active_name,
        "active_streams": engine.active_streams,
        "queued": engine.queued,
        "uptime_s": state.uptime_s,
        "version": state.version,
        "context_per_request": getattr(backend, "n_ctx_seq", None) or state.settings.server.n_ctx,
        "parallel": getattr(backend, "capacity", None),
        "auth": state.auth_mode,
        "instance": state.events.instance,
    }
    if engine.last_error:
        body["error"] = engine.last_error
    return web.json_response(body, status=503 if engine.state == "loading" else 200)


async def metrics(request: web.Request) -> web.Response:
    state = state_of(request)
    return web.Response(body=state.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app))


async def events(request: web.Request) -> web.StreamResponse:
    """SSE of server events; `?since=ID` replays the kept history after that id first."""
    state = state_of(request)
    bus = state.events
    queue = bus.subscribe()
    response = await open_sse(request)
    heartbeat = heartbeat_seconds(request)
    deadline = write_deadline(request)
    try:
        since = request.query.get("since")
        if since is not None:
            for event in list(bus.history):
                if since == "all" or (since.isdigit() and event["id"] > int(since)):
                    await deadline.write(response, sse_frame(event, event=event["type"], event_id=event["id"]))
        hello = {"type": "hello", "data": {"version": state.version, "instance": bus.instance}}
        await deadline.write(response, sse_frame(hello, event="hello"))
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), heartbeat)
            except TimeoutError:
                await deadline.write(response, HEARTBEAT_FRAME)
                continue
            if event is CLOSED:
                break
            batch = [event]
            while not queue.empty():
                extra = queue.get_nowait()
                if extra is CLOSED:
                    break
                batch.append(extra)
            await deadline.write(response, b"".join(sse_frame(e, event=e["type"], event_id=e["id"]) for e in batch))
    except ClientStalled:
        await drop_connection(request, response)  # a subscriber that stopped reading
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        bus.unsubscribe(queue)
    return response


async def requests_log(request: web.Request) -> web.Response:
    """The recent request log (method, path, status, ms), newest last; `?since=TS` for newer."""
    raw = request.query.get("since", "0")
    try:
        since = float(raw)
    except ValueError:
        raise InvalidRequest("'since' must be a timestamp in seconds", param="since") from None
    entries = [e for e in state_of(request).request_log if e["ts"] > since]
    return web.json_response({"requests": entries})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/requests", requests_log)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/api/events", events)
