"""GPU, host and model-pool telemetry: `/api/telemetry`, and samples on /api/events."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from abi_tui.errors import InvalidRequest
from abi_tui.server.state import ServerState, state_of
from abi_tui.telemetry import NvmlReader, TelemetrySampler

log = logging.getLogger(__name__)


def make_sampler(state: ServerState) -> TelemetrySampler:
    engine = state.engine

    def pool_stats() -> dict[str, Any]:
        for _ in range(3):  # the loop may resize the pool's dicts while this thread reads them
            try:
                return engine.pool.stats()
            except RuntimeError:
                continue
        return {"error": "pool busy"}

    reader = NvmlReader(state.services.get("nvml_module"), model_names=lambda: list(engine.pool.resident))
    return TelemetrySampler.from_settings(
        state.settings.telemetry, nvml_reader=reader, pool_stats=pool_stats,
        on_sample=lambda sample: state.events.publish("telemetry.sample", sample),
    )


class TelemetryService:
    def __init__(self, sampler: TelemetrySampler) -> None:
        self.sampler = sampler

    def latest_gpus(self) -> list[dict[str, Any]]:
        latest = self.sampler.snapshot().get("latest") or {}
        return (latest.get("gpu") or {}).get("gpus") or []


async def telemetry(request: web.Request) -> web.Response:
    service: TelemetryService = state_of(request).services["telemetry"]
    raw = request.query.get("history", "60")
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidRequest("'history' must be a number of samples (0-300)", param="history")
    snapshot = service.sampler.snapshot()
    snapshot["history"] = service.sampler.history(min(int(raw), 300)) if int(raw) else []
    return web.json_response(snapshot)


def attach(state: ServerState) -> None:
    service = TelemetryService(make_sampler(state))
    state.services["telemetry"] = service

    async def start(_: ServerState) -> None:
        service.sampler.start()

    async def stop(_: ServerState) -> None:
        service.sampler.stop()

    state.services.setdefault("startup", []).append(start)
    state.services.setdefault("cleanup", []).append(stop)


def setup(app: web.Application) -> None:
    app.router.add_get("/api/telemetry", telemetry)
