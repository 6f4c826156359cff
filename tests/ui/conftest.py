"""UI fixtures: a real server (the embedded one, on its own thread and loop, so both async pilot
tests and synchronous snapshot tests can drive the dashboard against it), cached tiny models,
a fake Hugging Face hub, and the app factory with time-dependent values frozen."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input
from tiny_gguf import write_tiny_gguf

from tests.models.fakehub import FakeHub

SIZE = (120, 34)
HUB_REPO = "abi-test/pico-GGUF"


@pytest.fixture(autouse=True)
def isolated_stores(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Other tools' model stores (HF cache, LM Studio, Ollama) live under a fresh, empty HOME."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for var in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "OLLAMA_MODELS", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(autouse=True)
def steady_cursor(monkeypatch: pytest.MonkeyPatch) -> None:
    """A blinking cursor makes two screenshots of the same screen differ (Harlequin does this too)."""
    monkeypatch.setattr(Input, "_toggle_cursor", lambda self: None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cache_model(abi_home: Path, source: Path, name: str | None = None) -> Path:
    """Put a GGUF into $ABI_HOME/models/test/<name>/ as if it had been downloaded."""
    name = name or source.stem
    target = abi_home / "models" / "test" / name / f"{name}.gguf"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


class UiServer:
    """The embedded server (abi_tui.server.main.EmbeddedServer) on a fixed port, restartable."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        self.overrides = {"server.threads": 1, "server.n_ctx": 512, "server.pool_memory_budget": 8 * 2**30,
                          "server.port": free_port(), **overrides}
        self.server: Any = None
        self.url = ""

    def start(self) -> UiServer:
        from abi_tui.config import load_settings
        from abi_tui.server.main import EmbeddedServer

        self.settings = load_settings(self.overrides)
        self.server = EmbeddedServer(self.settings)
        self.url = self.server.start()
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        import json
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if json.loads(response.read()).get("state") != "loading":
                        return
            except Exception:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server at {self.url} not ready")

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()


class ServeProcess:
    """`abi dash --serve` on a fixed port, killable like a crashed server and restartable."""

    def __init__(self, model: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = model
        self.process: subprocess.Popen | None = None

    def start(self) -> ServeProcess:
        command = [sys.executable, "-m", "abi_tui.cli", "dash", "--serve", "--port", str(self.port),
                   "--model", str(self.model), "--n-ctx", "512", "--threads", "1"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env={**os.environ, "ABI_THREADS": "1",
                                             "ABI_POOL_MEMORY_BUDGET": str(8 * 2**30)})
        UiServer.wait_ready(self)  # type: ignore[arg-type]
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def serve_process(cached: dict[str, Path]):
    started: list[ServeProcess] = []

    def start() -> ServeProcess:
        server = ServeProcess(cached["tiny"]).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def cached(abi_home: Path, tiny_model: Path, tiny_model_b: Path) -> dict[str, Path]:
    """Two cached models, `tiny` and `tiny-b`."""
    return {"tiny": cache_model(abi_home, tiny_model), "tiny-b": cache_model(abi_home, tiny_model_b)}


@pytest.fixture
def ui_server(cached: dict[str, Path]):
    """`ui_server(**server_settings)` starts the embedded server serving `tiny`."""
    started: list[UiServer] = []

    def start(**overrides: Any) -> UiServer:
        # By path: works whether or not the cache resolves names yet; the model is named "tiny".
        server = UiServer({"server.model": str(cached["tiny"]), **{f"server.{k}": v for k, v in overrides.items()}}).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def pico_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A hub repo with two quants of a tiny model (different weights, so different files)."""
    root = tmp_path_factory.mktemp("pico")
    files = {}
    for quant, seed in (("Q4_K_M", 11), ("Q8_0", 12)):
        path = write_tiny_gguf(root / f"pico-{quant}.gguf", seed=seed, name="pico")
        files[path.name] = path.read_bytes()
    return files


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, pico_files: dict[str, bytes]):
    """The fake hub with the pico repo; the server (same process) reads HF_ENDPOINT per call."""
    fake = FakeHub().start()
    fake.add_repo(HUB_REPO, pico_files, downloads=1234, likes=56)
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield fake
    fake.stop()


class Started:
    """Stands in for EmbeddedServer in the app: the test already started the server, so the app
    goes through its real `abi dash` start-up path (starting, then connected)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, settings: Any) -> Started:
        return self

    def start(self) -> str:
        return self.url

    def stop(self) -> None:
        pass


@pytest.fixture
def make_app():
    """`make_app(server)`: the dashboard on a running server, time-dependent values frozen."""
    from abi_tui.app import AbiApp
    from abi_tui.client import Backoff
    from abi_tui.config import load_settings

    def make(server: UiServer, **kwargs: Any) -> AbiApp:
        kwargs.setdefault("frozen", True)
        kwargs.setdefault("backoff", Backoff(initial=0.1, maximum=0.3, jitter=0.0))
        return AbiApp(load_settings(), embedded=Started(server.url), **kwargs)

    return make


async def wait_for(pilot: Any, condition: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Let the app run until `condition()` holds (I/O happens in workers, so poll)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            said = "; ".join(f"{n.title}: {n.message}" for n in pilot.app._notifications) or "none"
            raise AssertionError(f"timed out waiting for {what or condition} (the app's notifications: {said}; "
                                 f"{process_load()})")
        await pilot.pause(0.05)


def process_load() -> str:
    """Open files and threads of the test process, and where each thread is in abi's code: a
    timeout with a thousand open files is a leak (the server could not accept), and one with a
    thread parked on a lock says which, not a slow machine."""
    import threading
    import traceback

    try:
        files = str(len(os.listdir("/proc/self/fd")))
    except OSError:  # not Linux
        files = "?"
    names = {t.ident: t.name for t in threading.enumerate()}
    where = []
    for ident, frame in sys._current_frames().items():
        stack = traceback.extract_stack(frame)
        ours = [f for f in stack if "abi_tui" in f.filename] or stack
        last = ours[-1]
        where.append(f"{names.get(ident, ident)}: {Path(last.filename).name}:{last.lineno} {last.name}"
                     f" (in {Path(stack[-1].filename).name}:{stack[-1].lineno})")
    return f"this process: {files} open files, {len(where)} threads; " + "; ".join(sorted(where))


def wait_sync(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


Waiter = Callable[..., Awaitable[None]]
