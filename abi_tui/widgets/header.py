"""The header: program name, server address, state (ready / loading / no model / error), model,
and the progress of a hot swap while one runs."""

from __future__ import annotations

import re

from textual.content import Content
from textual.widgets import Static

from abi_tui.connection import LinkStatus
from abi_tui.formatting import Formatter

STATE_STYLE = {
    "ready": "$success", "loading": "$warning", "no model": "$text-muted", "error": "$error",
    "server down": "$error", "starting": "$warning", "connecting": "$warning",
}
RELOAD_TEXT = {
    "requested": "requested", "started": "validating", "draining": "draining streams", "drained": "drained",
    "loading": "loading", "done": "done", "failed": "failed", "rolled_back": "rolled back",
}


class StatusHeader(Static):
    DEFAULT_CSS = """
    StatusHeader {
        dock: top;
        height: 1;
        background: $panel;
        color: $foreground;
        padding: 0 1;
    }
    """

    def __init__(self, formatter: Formatter, **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self.formatter = formatter
        self.status = LinkStatus()

    def show(self, status: LinkStatus) -> None:
        self.status = status
        self.update(self.render_status(status))

    def render_status(self, status: LinkStatus) -> Content:
        state = status.state_label
        style = STATE_STYLE.get(state, "$foreground")
        if status.url:
            where = self.formatter.address(status.url)
        else:
            where = "embedded server" + ("" if status.phase == "failed" else " starting...")
        if not status.embedded:
            where += " (remote)"
        parts: list[Content | str | tuple[str, str]] = [
            ("abi", "bold $primary"), "  ", (where, "$text-muted"), "  ", ("● " + state, f"bold {style}"),
        ]
        health = status.health
        if status.phase == "up" and health is not None:
            parts += ["  ", ("model ", "$text-muted"), (health.model or "none", "bold")]
            if not health.model and health.state == "no_model" and status.reload is None:
                parts += [("  (m: choose one)", "$text-muted")]
            if health.active_streams or health.queued:
                parts += ["  ", (f"streams {health.active_streams} · queued {health.queued}", "$text-muted")]
            if health.state == "error" and health.error:
                parts += ["  ", (health.error[:60], "$error")]
        process = status.process
        if status.phase != "up" and process is not None and process.phase in ("exited", "starting") \
                and process.restarts:
            # Our own server process ended: why, and when it comes back, rather than "cannot reach".
            if process.phase == "exited":
                retry = f" · restarting in {self.formatter.seconds(max(1.0, process.retry_in_s or 0))}"
                text = f"server process ended ({process.last_exit}){retry}"
            else:
                text = f"server process restarting (restart {process.restarts})"
            parts += ["  ", (text[:140], "$error")]
        elif status.phase in ("down", "failed") and status.error:
            retry = f" · retrying in {self.formatter.seconds(max(1.0, status.retry_in_s))}" if status.retry_in_s else ""
            # The address is already on the left: keep only the reason.
            error = re.sub(r"^(cannot reach the server at \S+|embedded server did not start): ", "",
                           self.formatter.scrub(status.error, status.url))
            parts += ["  ", (error[:120] + retry, "$error")]
        if status.phase == "up" and process is not None and process.restarts:
            times = "once" if process.restarts == 1 else f"{process.restarts} times"
            parts += ["  ", (f"⟳ server restarted {times} (last: {(process.last_exit or '')[:60]})", "$warning")]
        reload = status.reload
        if reload is not None:
            mark, tone = ("⟳", "$warning") if not reload.finished else (("✔", "$success") if reload.ok else ("✘", "$error"))
            text = f"{mark} swap → {reload.target}: {RELOAD_TEXT.get(reload.stage, reload.stage)}"
            if reload.detail:
                text += f" ({reload.detail})"
            parts += ["  ", (text, tone)]
        return Content.assemble(*parts)
