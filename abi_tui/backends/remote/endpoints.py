"""Endpoints: the built-in providers (from the environment) and the `[endpoints.NAME]` tables
that `abi_tui.config` parsed, as the addresses, keys, policies and breakers requests use."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from abi_tui.backends.remote.breaker import CircuitBreaker
from abi_tui.backends.remote.policy import RemotePolicy
from abi_tui.config import ENDPOINT_KINDS, EndpointConfig

if TYPE_CHECKING:
    from abi_tui.config import Settings

DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_ANTHROPIC_URL = "https://api.anthropic.com"
DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"


@dataclass
class Endpoint:
    """One provider address: the model-id prefix, its protocol, and its health."""

    name: str
    kind: str
    url: str
    api_key_env: str | None = None
    policy: RemotePolicy = field(default_factory=RemotePolicy)
    capacity: int = 100
    list_models: bool = True
    builtin: bool = False
    breaker: CircuitBreaker = field(init=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.breaker = CircuitBreaker(self.name, self.policy.breaker_failures, self.policy.breaker_open_s)

    def api_key(self) -> str | None:
        # Read per request: a rotated key in the environment of an embedding program is seen.
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None

    @property
    def public(self) -> bool:
        return self.url in (DEFAULT_OPENAI_URL, DEFAULT_ANTHROPIC_URL)


def ollama_url(host: str) -> str:
    """OLLAMA_HOST as Ollama reads it: scheme defaults to http, port to 11434 (80/443 when a
    scheme is given), `0.0.0.0` (a bind address) means this machine."""
    host = host.strip()
    explicit = "://" in host
    parts = urlsplit(host if explicit else f"http://{host}")
    hostname = parts.hostname or "127.0.0.1"
    if hostname in ("0.0.0.0", "::"):
        hostname = "127.0.0.1"
    port = parts.port or (11434 if not explicit else 443 if parts.scheme == "https" else 80)
    shown = f"[{hostname}]" if ":" in hostname else hostname
    return f"{parts.scheme}://{shown}:{port}{parts.path.rstrip('/')}"


def endpoint_of(name: str, config: EndpointConfig, env: dict[str, str], capacity: int,
                policy: RemotePolicy | None = None) -> Endpoint:
    """The endpoint a checked table describes. A built-in provider's environment variables win
    over its table's url. `policy` replaces the defaults a table does not set (tests use it)."""
    policy = replace(policy or RemotePolicy(), **config.policy_values())
    concurrency = config.max_concurrency or capacity
    if name in ENDPOINT_KINDS:
        url, key_env = {
            "openai": (env.get("OPENAI_BASE_URL") or config.url or DEFAULT_OPENAI_URL, "OPENAI_API_KEY"),
            "ollama": (ollama_url(env.get("OLLAMA_HOST") or config.url or DEFAULT_OLLAMA_HOST), None),
            "anthropic": (env.get("ANTHROPIC_BASE_URL") or config.url or DEFAULT_ANTHROPIC_URL, "ANTHROPIC_API_KEY"),
        }[name]
        return Endpoint(name, name, url, config.api_key_env or key_env, policy, concurrency, config.list_models,
                        builtin=True)
    kind = config.kind or "openai"
    assert config.url, "config.endpoint_config requires a url"
    url = ollama_url(config.url) if kind == "ollama" else config.url
    return Endpoint(name, kind, url, config.api_key_env, policy, concurrency, config.list_models)


def endpoints_from_settings(settings: Settings, env: dict[str, str] | None = None,
                            policy: RemotePolicy | None = None) -> dict[str, Endpoint]:
    """The built-in providers and every configured endpoint, by model-id prefix."""
    env = dict(os.environ) if env is None else env
    configs = {kind: EndpointConfig() for kind in ENDPOINT_KINDS}
    configs.update(settings.endpoints)
    return {name: endpoint_of(name, config, env, settings.server.max_streams, policy)
            for name, config in configs.items()}
