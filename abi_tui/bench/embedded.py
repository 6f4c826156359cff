"""The server a benchmark starts for itself: `abi dash --serve` in a separate process.

A separate process, not a thread of the benchmark: the client's event loop and the server's must
not take turns on one interpreter, or the client's measurements would include the server's work
(and the GIL) and the server's would include the client's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

from abi_tui.errors import AbiError

STOP_TIMEOUT_S = 20.0


class BenchError(AbiError):
    """A benchmark that cannot run as asked (server does not start, every request fails, ...)."""

    code = "bench_failed"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


async def wait_healthy(url: str, timeout_s: float, process: subprocess.Popen | None = None,
                       token: str | None = None) -> dict:
    """Poll /health until the server answers and is not loading a model."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last = "no answer"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while loop.time() < deadline:
            if process is not None and process.poll() is not None:
                raise BenchError(f"the embedded server exited with status {process.returncode}")
            try:
                async with session.get(f"{url}/health", headers=headers) as response:
                    body = await response.json(content_type=None)
                    if isinstance(body, dict) and body.get("state") != "loading":
                        return body
                    last = f"state {body.get('state') if isinstance(body, dict) else body!r}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                last = f"{exc.__class__.__name__}: {exc}"
            await asyncio.sleep(0.05)
    raise BenchError(f"the server at {url} was not ready within {timeout_s:.0f} s ({last})")


class ServerProcess:
    """`abi dash --serve --host 127.0.0.1 --port <free>` plus extra flags; stopped with SIGINT."""

    def __init__(self, args: list[str] | None = None, env: dict[str, str] | None = None,
                 token: str | None = None) -> None:
        self.args = list(args or [])
        self.env = env
        self.token = token
        self.url: str | None = None
        self.process: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()
        self.health: dict = {}

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self, timeout_s: float = 120.0) -> str:
        port = free_port()
        command = [sys.executable, "-m", "abi_tui.cli", "dash", "--serve", "--host", "127.0.0.1",
                   "--port", str(port), *self.args]
        if self.token:
            command += ["--token", self.token]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=self._log, env={**os.environ, **(self.env or {})},
                                        cwd=Path.cwd())
        self.url = f"http://127.0.0.1:{port}"
        try:
            self.health = await wait_healthy(self.url, timeout_s, self.process, self.token)
        except BenchError as exc:
            tail = self.log_tail()
            await self.stop()
            raise BenchError(f"{exc.message}{': ' + tail if tail else ''}") from None
        return self.url

    def log_tail(self, lines: int = 3) -> str:
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace").strip().splitlines()
        return " | ".join(text[-lines:])

    async def stop(self) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(process.wait, STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        self._log.close()
        return process.returncode
