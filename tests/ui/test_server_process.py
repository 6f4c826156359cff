"""`abi dash` runs its server as a child process (abi_tui/server/supervisor.py): the dashboard
follows it by URL and token, the header shows a crash and the restart, and the child never
outlives the dashboard, even one killed with SIGKILL."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import psutil
import pytest

from abi_tui.app import AbiApp
from abi_tui.client import Backoff
from abi_tui.config import load_settings
from abi_tui.server.supervisor import ServerSupervisor, describe_exit
from abi_tui.widgets.header import StatusHeader

from .conftest import SIZE, wait_for

FLAGS = ("--n-ctx", "512", "--threads", "1")


def header_text(app: AbiApp) -> str:
    return app.query_one(StatusHeader).render_status(app.link).plain


def server_children(pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if "--serve" in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_exit_reasons():
    assert describe_exit(-9, ["INFO listening"]) == "killed by SIGKILL"
    assert describe_exit(1, ["Traceback ...", "  File x", "ValueError: bad", ""]) == "exit status 1: ValueError: bad"
    assert describe_exit(2, []) == "exit status 2"


async def test_dashboard_follows_its_server_process_through_a_crash(cached, abi_home):
    """The app gets only the handle: the child's URL and fresh token reach it, a SIGKILLed child
    shows in the header, comes back on the same address, and the header says it restarted."""
    supervisor = ServerSupervisor(["--model", str(cached["tiny"]), *FLAGS], logs_dir=abi_home / "logs",
                                  backoff_s=(1.5,)).launch()
    try:
        app = AbiApp(load_settings(), server=supervisor, frozen=True, persist_theme=False,
                     backoff=Backoff(initial=0.1, maximum=0.3, jitter=0.0))
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.link.connected and app.link.health is not None
                           and app.link.health.model == "tiny", timeout=60, what="the server process")
            assert app.token == supervisor.token and app.link.health.auth == "token"
            first_url, first_pid = app.link.url, supervisor.state.pid
            assert first_pid is not None and psutil.Process(first_pid).ppid() == os.getpid()

            os.kill(first_pid, signal.SIGKILL)
            await wait_for(pilot, lambda: "server process ended (killed by SIGKILL)" in header_text(app),
                           timeout=15, what="the crash in the header")
            assert "restarting in 1s" in header_text(app)
            await wait_for(pilot, lambda: app.link.connected and supervisor.state.pid != first_pid
                           and app.link.health is not None and app.link.health.model == "tiny",
                           timeout=60, what="the restarted server")
            assert app.link.url == first_url
            assert "server restarted once (last: killed by SIGKILL)" in header_text(app)
        log = (abi_home / "logs" / "server.log").read_text()
        assert "the server process ended (killed by SIGKILL)" in log
        assert "abi server listening on" in log  # the child's own log
    finally:
        supervisor.stop()
    assert supervisor.process is not None and supervisor.process.poll() is not None


def test_child_ends_when_its_stdin_closes(cached, abi_home):
    """The portable fallback: the dashboard's pipe reads EOF once the dashboard is gone."""
    command = [sys.executable, "-m", "abi_tui.cli", "dash", "--serve", "--model", str(cached["tiny"]), *FLAGS,
               "--port", "0", "--supervised-by", str(os.getpid())]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert child.stderr is not None
        for line in child.stderr:
            if b"abi server listening on" in line:
                break
        threading.Thread(target=child.stderr.read, daemon=True).start()
        assert child.poll() is None
        assert child.stdin is not None
        child.stdin.close()
        assert child.wait(timeout=20) == 0  # a graceful stop
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pty and /proc checks are Linux's")
def test_sigkill_of_the_dashboard_leaves_no_server_behind(cached, abi_home):
    """The real `abi dash` in a terminal; SIGKILL it; its server process goes too."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
    dash = subprocess.Popen([sys.executable, "-m", "abi_tui.cli", "dash", "--model", str(cached["tiny"]), *FLAGS],
                            stdin=follower, stdout=follower, stderr=follower, start_new_session=True,
                            env={**os.environ, "TERM": "xterm-256color"})
    os.close(follower)
    screen = bytearray()

    def drain() -> None:  # the dashboard blocks on a full terminal otherwise
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:
                return
            if not data:
                return
            screen.extend(data)

    threading.Thread(target=drain, daemon=True).start()
    servers: list[psutil.Process] = []
    try:
        wait_until(lambda: server_children(dash.pid), 30, "the server process")
        server = server_children(dash.pid)[0]
        servers.append(server)
        log = Path(abi_home) / "logs" / "server.log"
        wait_until(lambda: log.exists() and "listening on" in log.read_text(), 60, "the server to listen")
        assert "--supervised-by" in server.cmdline() and "--model" in server.cmdline()
        dash.kill()
        dash.wait(timeout=10)
        wait_until(lambda: gone(server), 20, "the server process to end after the dashboard's SIGKILL")
    finally:
        if dash.poll() is None:
            dash.kill()
            dash.wait()
        for leftover in servers:
            if not gone(leftover):
                leftover.kill()
        os.close(leader)
