"""Attach the optional services (model cache, personas, memory, telemetry) to a server state.

Each one registers its routes' helpers and hooks in `state.services`; a service that is not
available here leaves the server fully working without it.
"""

from __future__ import annotations

from abi_tui.config import ConfigError, save_setting
from abi_tui.server.state import ServerState


def attach_services(state: ServerState) -> None:
    settings = state.settings

    def remember_model(spec: str) -> None:
        # The last used model loads lazily on the next start.
        if settings.models.last_used != spec:
            try:
                save_setting(settings, "models.last_used", spec)
            except (OSError, ConfigError):
                pass  # remembering is a convenience; never fail a swap over it

    state.services["remember_model"] = remember_model

    # Remote backends: openai/, ollama/, anthropic/ and configured endpoints.
    from abi_tui.backends.remote.registry import register_remote_backends

    remote = register_remote_backends(state.engine, settings)
    state.services["remote"] = remote
    state.services["remote_models"] = remote.list_models
    state.services.setdefault("cleanup", []).append(lambda _state: remote.close())

    from abi_tui.server import routes_personas, routes_telemetry

    routes_telemetry.attach(state)
    routes_personas.attach(state)
