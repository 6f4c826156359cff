"""The dashboard's server as a child process: `abi dash` runs `abi dash --serve` beside it.

Why a process and not a thread: Textual renders on the main thread of the dashboard; a server in
the same interpreter shares the GIL with it, and every re-render of a streaming answer delayed
the server's event loop and the Python side of each decode step (the model ran at half speed
while the Chat pane streamed). In its own process the server has its own interpreter.

`ServerSupervisor` (in the dashboard) starts the child on a free loopback port with a fresh random
token, reads its stderr for the "listening" line, restarts it with backoff when it exits on its
own, and reports each change to whoever `watch`es. The child's log is `$ABI_HOME/logs/server.log`
(the server writes it); the supervisor appends why a child ended.

The child dies with the dashboard however the dashboard ends: `watch_parent` (in the child) asks
Linux for SIGTERM when the parent dies (PR_SET_PDEATHSIG), and, on every platform, watches its
stdin, a pipe from the dashboard that reads EOF once the dashboard is gone, even after SIGKILL.

Standard library only: this runs before the dashboard's first paint.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

log = logging.getLogger("abi.supervisor")

HOST = "127.0.0.1"
LISTENING = "abi server listening on "  # what `serve_forever` prints once it accepts connections
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STABLE_S = 60.0  # a child that ran this long before it ended starts the backoff from the beginning
STOP_GRACE_S = 15.0  # the server's own graceful stop takes up to 10 s
PR_SET_PDEATHSIG = 1
TAIL_LINES = 20


@dataclass(frozen=True)
class ChildState:
    """What the dashboard shows about its server process.

    phase: starting (spawned, not listening yet), ready, exited (ended on its own; restarting in
    `retry_in_s`), stopped (the dashboard is closing)."""

    phase: str = "starting"
    url: str | None = None
    pid: int | None = None
    restarts: int = 0
    last_exit: str | None = None  # why the last child ended: "exit status 1: <its last line>"
    retry_in_s: float | None = None


def free_port(host: str = HOST, wanted: int | None = None) -> int:
    """`wanted` when it can be bound (a restarted child keeps its address), else a free port."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if wanted:
            try:
                probe.bind((host, wanted))
                return wanted
            except OSError:
                pass
        probe.bind((host, 0))
        return probe.getsockname()[1]


def describe_exit(returncode: int, tail: Sequence[str]) -> str:
    """"killed by SIGKILL", or "exit status 1: <the last line it wrote>" (a traceback's last line,
    the error it printed)."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    last = next((line.strip() for line in reversed(tail) if line.strip()), "")
    return f"exit status {returncode}: {last[:200]}" if last else f"exit status {returncode}"


class ServerSupervisor:
    """Starts, watches and restarts `abi dash --serve` for the dashboard.

    `flags`: the `abi dash` flags the child inherits (model, n_ctx, parallel, ...), as command-line
    arguments; configuration and `ABI_*` variables reach it through the environment. The token is
    new for every dashboard and goes to the child in `ABI_API_TOKEN`, not on its command line."""

    def __init__(self, flags: Sequence[str] = (), *, logs_dir: Path | None = None,
                 env: dict[str, str] | None = None, backoff_s: Sequence[float] = BACKOFF_S) -> None:
        self.flags = list(flags)
        self.logs_dir = logs_dir
        self.env = env
        self.backoff_s = tuple(backoff_s)
        self.token = secrets.token_urlsafe(24)
        self.state = ChildState()
        self.process: subprocess.Popen | None = None
        self._watchers: list[Callable[[ChildState], None]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._port: int | None = None
        # Every child is spawned from this thread: Linux sends PR_SET_PDEATHSIG when the *thread*
        # that forked the child ends, so it must live as long as the dashboard.
        self._thread = threading.Thread(target=self._run, name="abi-server-supervisor", daemon=True)

    # -- the dashboard's side ---------------------------------------------------------------------
    def launch(self) -> ServerSupervisor:
        """Spawn the first child now (it starts while the dashboard paints) and return at once."""
        self._thread.start()
        return self

    def start(self, timeout: float = 120.0) -> str:
        """Wait until a child listens and return its URL (the dashboard's `embedded` contract)."""
        if not self._thread.is_alive() and not self._stopping.is_set():
            self.launch()
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.state.phase != "ready":
                if self._stopping.is_set():
                    raise RuntimeError("the dashboard is closing")
                if self.state.phase == "exited":
                    raise RuntimeError(f"the server process ended ({self.state.last_exit}); "
                                       f"restarting in {self.state.retry_in_s:.0f} s")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"the server process did not listen within {timeout:.0f} s")
                self._changed.wait(left)
            assert self.state.url is not None
            return self.state.url

    def watch(self, callback: Callable[[ChildState], None]) -> ChildState:
        """Call `callback(state)` (from the supervisor's thread) on every change; returns the
        state now."""
        with self._lock:
            self._watchers.append(callback)
            return self.state

    def stop(self) -> None:
        """Stop the child (SIGTERM: the server's graceful stop; SIGKILL after STOP_GRACE_S)."""
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._set(phase="stopped", retry_in_s=None)

    # -- the supervisor's thread ------------------------------------------------------------------
    def _set(self, **changes: object) -> None:
        with self._changed:
            self.state = replace(self.state, **changes)  # type: ignore[arg-type]
            state, watchers = self.state, list(self._watchers)
            self._changed.notify_all()
        for callback in watchers:
            try:
                callback(state)
            except Exception:  # a watcher's bug must not stop the supervision
                log.exception("a server state watcher failed")

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "abi_tui.cli", "dash", "--serve", *self.flags, "--host", HOST,
                "--port", str(port), "--supervised-by", str(os.getpid())]

    def _spawn(self) -> tuple[subprocess.Popen, threading.Event, collections.deque[str]]:
        self._port = free_port(HOST, self._port)
        env = {**os.environ, **(self.env or {}), "ABI_API_TOKEN": self.token}
        process = subprocess.Popen(self.command(self._port), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, env=env, close_fds=True)
        listening = threading.Event()
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

        def read_stderr() -> None:
            # Its logging also goes to server.log; here only the listening line and a tail for
            # saying why it ended. Read to the end so the child never blocks on a full pipe.
            assert process.stderr is not None
            for raw in process.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                tail.append(line)
                if LISTENING in line:
                    listening.set()
            listening.set()  # EOF: the child is gone; the caller sees it exit

        threading.Thread(target=read_stderr, name="abi-server-stderr", daemon=True).start()
        return process, listening, tail

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            spawned = time.monotonic()
            try:
                process, listening, tail = self._spawn()
            except OSError as exc:
                process, listening, tail = None, None, collections.deque([str(exc)])
            if process is not None and listening is not None:
                self.process = process
                self._set(phase="starting", pid=process.pid, retry_in_s=None)
                listening.wait()
                if process.poll() is None and not self._stopping.is_set():
                    self._set(phase="ready", url=f"http://{HOST}:{self._port}")
                returncode = process.wait()
                if self._stopping.is_set():
                    return
                reason = describe_exit(returncode, tail)
            else:
                reason = f"could not start: {tail[-1]}"
            failures = 0 if time.monotonic() - spawned > STABLE_S else failures
            delay = self.backoff_s[min(failures, len(self.backoff_s) - 1)]
            failures += 1
            self._log_exit(reason, tail)
            self._set(phase="exited", last_exit=reason, restarts=self.state.restarts + 1, retry_in_s=delay)
            if self._stopping.wait(delay):
                return

    def _log_exit(self, reason: str, tail: Sequence[str]) -> None:
        log.warning("the server process ended (%s); restarting", reason)
        if self.logs_dir is None:
            return
        try:
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            with open(self.logs_dir / "server.log", "a", encoding="utf-8") as out:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                out.write(f"{stamp} WARNING abi.supervisor: the server process ended ({reason}); "
                          "the dashboard restarts it. Its last lines on stderr:\n")
                out.writelines(f"    {line}\n" for line in tail)
        except OSError:
            pass


# -- the child's side ---------------------------------------------------------------------------
def watch_parent(parent_pid: int) -> None:
    """In the child: end (gracefully, SIGTERM) when the dashboard `parent_pid` is gone."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the stdin pipe below still works
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)

    def stdin_closed() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), signal.SIGTERM)
        # The graceful stop takes up to 10 s; a server that hangs in it must still go.
        time.sleep(STOP_GRACE_S)
        os._exit(1)

    threading.Thread(target=stdin_closed, name="abi-parent-watch", daemon=True).start()
