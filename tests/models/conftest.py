"""Fixtures for the model-cache tests: GGUF files, a fake hub on 127.0.0.1, settings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tiny_gguf import write_tiny_gguf

from .fakehub import FakeHub


@pytest.fixture(scope="session")
def gguf_bytes(tmp_path_factory: pytest.TempPathFactory):
    """`gguf_bytes(seed, big=False)`: the bytes of a valid tiny GGUF; `big` makes a ~4 MiB one."""
    root = tmp_path_factory.mktemp("ggufs")
    made: dict[tuple[int, bool], bytes] = {}

    def make(seed: int = 0, big: bool = False) -> bytes:
        if (seed, big) not in made:
            path = root / f"m{seed}{'-big' if big else ''}.gguf"
            kwargs = {"n_embd": 256, "n_layer": 4, "n_ff": 512} if big else {}
            write_tiny_gguf(path, seed=seed, name=f"m{seed}", **kwargs)
            made[(seed, big)] = path.read_bytes()
        return made[(seed, big)]

    return make


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    """A running fake hub; HF_ENDPOINT points at it and offline mode is off."""
    fake = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def isolated_stores(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Other tools' stores (HF cache, LM Studio, Ollama, the demo model) live under a fresh HOME."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for var in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "OLLAMA_MODELS"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def settings(abi_home: Path):
    from abi_tui.config import load_settings

    return load_settings()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
