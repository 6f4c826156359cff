"""The aiohttp application: middlewares (errors, browser guard, auth, metrics, request log) and route
families."""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from typing import Any

from aiohttp import web

from abi_tui.backends.engine import InferenceEngine, Stream
from abi_tui.config import Settings
from abi_tui.errors import AbiError
from abi_tui.server import auth, guard
from abi_tui.server.errors import error_response, http_error_response, internal_error_response
from abi_tui.server.events import EventBus
from abi_tui.server.metrics import ServerMetrics
from abi_tui.server.services import attach_services
from abi_tui.server.state import STATE, ServerState

log = logging.getLogger(__name__)

# Route families, each a module with `setup(app)`. Order does not matter.
ROUTE_MODULES = (
    "abi_tui.server.routes_system",
    "abi_tui.server.routes_openai",
    "abi_tui.server.routes_stream",
    "abi_tui.server.routes_admin",
    "abi_tui.server.routes_telemetry",
    "abi_tui.server.routes_personas",
    "abi_tui.server.routes_memory",
    "abi_tui.server.routes_models",
    "abi_tui.server.routes_ollama",
)


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource.get_info() if request.match_info.route.resource else {}
    return info.get("path") or info.get("formatter") or "unmatched"


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    state: ServerState = request.app[STATE]
    started = time.perf_counter()
    status = 500
    try:
        # Host, Origin and content type first: a preflight carries no token, and a page's
        # request is refused before the body is read (docs/SECURITY.md).
        response = guard.check(request, state.settings)
        if response is not None:
            status = response.status
            return response
        auth.check(request, state.settings.server.token, state.settings.admin_token)
        response = await handler(request)
        status = response.status
        return response
    except AbiError as exc:
        status = exc.status
        return error_response(exc)
    except web.HTTPException as exc:
        status = exc.status
        return http_error_response(exc)
    except asyncio.CancelledError:
        status = 499  # the client went away
        raise
    except ConnectionError:
        status = 499  # the client went away before the answer started: nobody to answer, no traceback
        raise
    except Exception as exc:
        status = 500
        return internal_error_response(exc)
    finally:
        route = _route_name(request)
        if state.metrics is not None:
            state.metrics.requests.labels(route=route, status=str(status)).inc()
        if route not in ("/health", "/metrics", "/api/requests"):  # pollers would drown the log
            state.request_log.append({"ts": time.time(), "method": request.method, "path": request.path,
                                      "status": status, "ms": round((time.perf_counter() - started) * 1000, 1)})


def _live_state(state: ServerState) -> dict[str, Any]:
    engine = state.engine
    telemetry = state.services.get("telemetry")
    gpus = []
    if telemetry is not None:
        try:
            gpus = telemetry.latest_gpus()
        except Exception:
            gpus = []
    extra = []
    for collect in state.services.get("metric_collectors", []):
        extra.extend(collect())
    return {"active_streams": engine.active_streams, "queued": engine.queued,
            "pool_models": engine.pool.summary()["models"], "gpus": gpus, "extra": extra}


def create_app(settings: Settings, engine: InferenceEngine | None = None,
               services: dict[str, Any] | None = None) -> web.Application:
    """`services` pre-sets entries of `state.services` (tests inject a fake `nvml_module`)."""
    events = EventBus()
    engine = engine or InferenceEngine(settings, publish=events.publish)
    engine.publish = events.publish
    state = ServerState(settings=settings, engine=engine, events=events)
    state.metrics = ServerMetrics(lambda: _live_state(state))

    def observe(stream: Stream) -> None:
        timings = stream.timings()
        state.metrics.observe_stream(stream.prompt_tokens, stream.completion_tokens,
                                     timings["ttft_ms"], timings["tokens_per_s"])
    engine.stream_listeners.append(observe)

    app = web.Application(middlewares=[errors_middleware], client_max_size=settings.server.max_body_bytes)
    app[STATE] = state
    app.on_response_prepare.append(guard.add_cors_headers)
    state.services.update(services or {})
    attach_services(state)

    for name in ROUTE_MODULES:
        importlib.import_module(name).setup(app)

    async def on_startup(app: web.Application) -> None:
        events.bind(asyncio.get_running_loop())
        for hook in state.services.get("startup", []):
            await hook(state)

    async def on_cleanup(app: web.Application) -> None:
        for hook in state.services.get("cleanup", []):
            await hook(state)
        await engine.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
