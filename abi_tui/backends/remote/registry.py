"""The remote endpoints of one server: a backend per model id, one HTTP layer for all."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp

from abi_tui.backends.remote.anthropic import AnthropicBackend
from abi_tui.backends.remote.backend import RemoteBackend
from abi_tui.backends.remote.endpoints import endpoints_from_settings
from abi_tui.backends.remote.listing import list_remote_models
from abi_tui.backends.remote.ollama import OllamaBackend
from abi_tui.backends.remote.openai_compat import OpenAICompatBackend
from abi_tui.backends.remote.policy import RemotePolicy
from abi_tui.net.http_client import HttpStreams

if TYPE_CHECKING:
    from abi_tui.backends.base import Backend
    from abi_tui.backends.engine import InferenceEngine
    from abi_tui.config import Settings

BACKENDS: dict[str, type[RemoteBackend]] = {"openai": OpenAICompatBackend, "ollama": OllamaBackend,
                                            "anthropic": AnthropicBackend}
MAX_BACKENDS = 256


class RemoteRegistry:
    """The endpoints of one server, one backend per model id, and one HTTP layer for all."""

    def __init__(self, settings: Settings, policy: RemotePolicy | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.endpoints = endpoints_from_settings(settings, env, policy)
        self.backends: dict[str, RemoteBackend] = {}
        # No pool limit: the scheduler already bounds concurrent streams per endpoint.
        self.streams = HttpStreams(timeout=aiohttp.ClientTimeout(total=None), trust_env=True)

    @property
    def prefixes(self) -> list[str]:
        return list(self.endpoints)

    def backend(self, model_id: str) -> Backend:
        backend = self.backends.get(model_id)
        if backend is not None:
            return backend
        endpoint = self.endpoints[model_id.split("/", 1)[0]]
        backend = BACKENDS[endpoint.kind](model_id, endpoint, self.streams)
        if len(self.backends) >= MAX_BACKENDS:  # model ids come from clients: keep this bounded
            self.backends.clear()
        self.backends[model_id] = backend
        return backend

    async def list_models(self) -> list[str]:
        return await list_remote_models(self.endpoints, self.streams)

    async def close(self) -> None:
        await self.streams.close()


def register_remote_backends(engine: InferenceEngine, settings: Settings, policy: RemotePolicy | None = None,
                             env: dict[str, str] | None = None) -> RemoteRegistry:
    """Give the engine a factory per prefix: openai, ollama, anthropic and each configured
    endpoint name. Each model id gets one backend; each endpoint one breaker."""
    registry = RemoteRegistry(settings, policy, env)
    for prefix in registry.prefixes:
        engine.remote_factories[prefix] = registry.backend
    return registry
