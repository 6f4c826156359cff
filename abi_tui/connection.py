"""What the dashboard knows about its server connection (plain records, no Textual), and the
small protocols through which `cli.py` hands the app the server it composed.

The UI reaches the server only over HTTP (`client.py`): these protocols say what it needs of a
server it did not start itself, so neither the app nor a pane imports the server package
(`server.supervisor.ServerSupervisor` and `server.main.EmbeddedServer` fit them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from abi_tui.client import Health


class ProcessState(Protocol):
    """The dashboard's server process as the header shows it.

    phase: starting (spawned, not listening yet), ready, exited (ended on its own; restarting in
    `retry_in_s`), stopped (the dashboard is closing)."""

    @property
    def phase(self) -> str: ...
    @property
    def url(self) -> str | None: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def restarts(self) -> int: ...
    @property
    def last_exit(self) -> str | None: ...
    @property
    def retry_in_s(self) -> float | None: ...


class SupervisedServer(Protocol):
    """`abi dash`'s server process: its token, and its state now and on every change (the
    callback runs on another thread)."""

    token: str

    def watch(self, callback: Callable[[ProcessState], None]) -> ProcessState: ...


class InProcessServer(Protocol):
    """A server on a thread of the dashboard's process (tests, benchmarks): `start()` returns
    its URL once it listens."""

    def start(self) -> str: ...
    def stop(self) -> None: ...


@dataclass
class ReloadStatus:
    """A hot swap in progress or just finished, as the header shows it."""

    target: str
    stage: str = "requested"   # requested, started, draining, drained, loading, done, failed, rolled_back
    detail: str = ""
    finished: bool = False
    ok: bool = True


@dataclass
class LinkStatus:
    url: str | None = None
    embedded: bool = True
    # starting (embedded server not bound yet), connecting, up, down, failed (could not start)
    phase: str = "starting"
    health: Health | None = None
    error: str | None = None
    retry_in_s: float | None = None
    reload: ReloadStatus | None = None
    notes: list[str] = field(default_factory=list)
    process: ProcessState | None = None  # the dashboard's own server process (`abi dash`)

    @property
    def connected(self) -> bool:
        return self.phase == "up"

    @property
    def state_label(self) -> str:
        """ready / loading / no model / error, or the connection's own state."""
        if self.phase == "starting":
            return "starting"
        if self.phase == "connecting":
            return "connecting"
        if self.phase in ("down", "failed"):
            return "server down" if self.phase == "down" else "error"
        if self.health is None:
            return "connecting"
        return {"no_model": "no model"}.get(self.health.state, self.health.state)
