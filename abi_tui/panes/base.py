"""The pane contract: what every pane (Chat, Models, GPU, Bench, Server) gets from the app.

A pane is a `Pane` subclass in `abi_tui/panes/<pane>.py`, named in `PANES` in app.py. It:

- reaches the server only through `self.client` (an `AbiClient`), from workers, never blocking;
- gets `server_status(status)` on every change of connection or /health (LinkStatus), and
  `server_event(event)` for every /api/events event (telemetry samples included), both on the
  UI loop: keep them cheap, start a worker for anything slow;
- gets `pane_shown()` each time it becomes the visible pane (refresh there, poll only while shown);
- declares BINDINGS with an `id` on every Binding (`<pane>-<action>`), so users can remap
  them in `[keys]` of config.toml, and `COMMANDS`: (title, help, action) tuples that the
  command palette offers while the app runs;
- formats time-dependent values through `self.fmt` (a Formatter: frozen in snapshot tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual.containers import Container

from abi_tui.client import AbiClient, ServerEvent
from abi_tui.connection import LinkStatus
from abi_tui.formatting import Formatter

if TYPE_CHECKING:
    from abi_tui.app import AbiApp


class Pane(Container):
    PANE_ID: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""
    # (title, help, action name on this pane) for the command palette.
    COMMANDS: ClassVar[tuple[tuple[str, str, str], ...]] = ()

    DEFAULT_CSS = """
    Pane {
        height: 1fr;
    }
    """

    @property
    def abi(self) -> AbiApp:
        return self.app  # type: ignore[return-value]

    @property
    def client(self) -> AbiClient | None:
        """None until the server's address is known (the embedded server is still starting)."""
        return self.abi.client

    @property
    def fmt(self) -> Formatter:
        return self.abi.fmt

    @property
    def link(self) -> LinkStatus:
        return self.abi.link

    def server_status(self, status: LinkStatus) -> None:
        """Connection or /health changed."""

    def server_event(self, event: ServerEvent) -> None:
        """One event from /api/events (or connection.open / connection.lost)."""

    def pane_shown(self) -> None:
        """This pane became the visible one."""
