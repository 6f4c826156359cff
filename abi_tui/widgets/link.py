"""What the dashboard knows about its server connection (plain records, no Textual)."""

from __future__ import annotations

from dataclasses import dataclass, field

from abi_tui.client import Health
from abi_tui.server.supervisor import ChildState


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
    process: ChildState | None = None  # the dashboard's own server process (`abi dash`)

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
