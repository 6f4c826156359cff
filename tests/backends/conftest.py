"""Fixtures for the remote backends: fake providers on 127.0.0.1 and a server wired to them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fakes.providers import FakeAnthropic, FakeOllama, FakeOpenAI, FakeProvider

# Model ids per provider prefix; "local" is a named OpenAI-compatible endpoint from config.toml.
MODELS = {"openai": "openai/gpt-fake", "local": "local/fake-small", "ollama": "ollama/llama3:8b",
          "anthropic": "anthropic/claude-fake"}
KEYS = {"openai": "sk-openai-test", "local": "sk-local-test", "anthropic": "sk-ant-test"}


def toml_tables(tables: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        for key, value in table.items():
            rendered = f'"{value}"' if isinstance(value, str) else str(value).lower() if isinstance(value, bool) \
                else repr(value)
            lines.append(f"{key} = {rendered}")
        lines.append("")
    return "\n".join(lines)


@dataclass
class Remote:
    """The four fakes, the config that points at them, and a way to start the server."""

    home: Path
    fakes: dict[str, FakeProvider]
    app_server: Any
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)

    def configure(self, prefix: str, **settings: Any) -> None:
        """Add keys to `[endpoints.<prefix>]` (before `start`)."""
        self.endpoints.setdefault(prefix, {}).update(settings)

    async def start(self, **server: Any) -> Any:
        tables = {f"endpoints.{name}": table for name, table in self.endpoints.items()}
        (self.home / "config.toml").write_text(toml_tables(tables), encoding="utf-8")
        return await self.app_server(**server)


@pytest.fixture(autouse=True)
def fresh_model_cache() -> Iterator[None]:
    from abi_tui.backends.remote.listing import clear_model_cache

    clear_model_cache()
    yield
    clear_model_cache()


@pytest.fixture
def fakes() -> Iterator[dict[str, FakeProvider]]:
    started = {"openai": FakeOpenAI(api_key=KEYS["openai"]).start(),
               "local": FakeOpenAI(api_key=KEYS["local"]).start(),
               "ollama": FakeOllama().start(),
               "anthropic": FakeAnthropic(api_key=KEYS["anthropic"]).start()}
    yield started
    for fake in started.values():
        fake.stop()


@pytest.fixture
def remote(abi_home: Path, fakes: dict[str, FakeProvider], app_server: Any,
           monkeypatch: pytest.MonkeyPatch) -> Remote:
    monkeypatch.setenv("OPENAI_BASE_URL", fakes["openai"].base_url)
    monkeypatch.setenv("OPENAI_API_KEY", KEYS["openai"])
    monkeypatch.setenv("OLLAMA_HOST", fakes["ollama"].url.removeprefix("http://"))  # as users write it
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fakes["anthropic"].base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEYS["anthropic"])
    monkeypatch.setenv("LOCAL_LLM_KEY", KEYS["local"])
    setup = Remote(abi_home, fakes, app_server)
    setup.configure("local", url=fakes["local"].base_url, api_key_env="LOCAL_LLM_KEY")
    for prefix in MODELS:  # quick retries: the backoff itself is not under test here
        setup.configure(prefix, retry_backoff_s=0.01)
    return setup
