"""What every route shares: settings, engine, events, metrics, and the request log."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from abi_tui import __version__
from abi_tui.backends.engine import InferenceEngine
from abi_tui.config import Settings
from abi_tui.server.events import EventBus
from abi_tui.server.metrics import ServerMetrics


@dataclass
class ServerState:
    settings: Settings
    engine: InferenceEngine
    events: EventBus
    metrics: ServerMetrics | None = None
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    version: str = __version__
    address: str = ""
    request_log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))
    services: dict[str, Any] = field(default_factory=dict)  # telemetry, personas, memory, models

    def local_models(self) -> list[dict[str, Any]]:
        """Cached models (blocking: reads the cache folders)."""
        lister = self.services.get("list_models")
        return lister(self.settings) if lister else []

    async def remote_models(self) -> list[str]:
        lister = self.services.get("remote_models")
        return await lister() if lister else []

    @property
    def uptime_s(self) -> float:
        return round(time.monotonic() - self.started, 3)

    @property
    def auth_mode(self) -> str:
        server = self.settings.server
        if not server.token:
            return "none"
        return "token+admin" if server.admin_token and server.admin_token != server.token else "token"


STATE: web.AppKey[ServerState] = web.AppKey("abi_state", ServerState)


def state_of(request: web.Request) -> ServerState:
    return request.app[STATE]
