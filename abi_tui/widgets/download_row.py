"""One download in the Models pane's queue: name, bar, bytes, rate, ETA and state."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Label, ProgressBar

from abi_tui.client import DownloadProgress
from abi_tui.formatting import Formatter, human_bytes

STATE_STYLE = {
    "queued": "$text-muted", "connecting": "$warning", "downloading": "$primary", "stalled": "$warning",
    "verifying": "$secondary", "done": "$success", "failed": "$error", "paused": "$warning",
    "cancelled": "$text-muted",
}


class DownloadRow(Widget, can_focus=True):
    """Focus a row to pause (p), resume (r) or cancel (c) that download."""

    DEFAULT_CSS = """
    DownloadRow {
        layout: horizontal;
        height: 1;
        padding: 0 1;
    }
    DownloadRow:focus {
        background: $boost;
        text-style: bold;
    }
    DownloadRow .name {
        width: 1fr;
        min-width: 16;
    }
    DownloadRow ProgressBar {
        width: 34;
    }
    DownloadRow ProgressBar Bar {
        width: 24;
    }
    DownloadRow .bytes {
        width: 21;
        text-align: right;
    }
    DownloadRow .rate {
        width: 12;
        text-align: right;
    }
    DownloadRow .eta {
        width: 8;
        text-align: right;
    }
    DownloadRow .state {
        width: 13;
        padding-left: 2;
    }
    """

    def __init__(self, spec: str, formatter: Formatter, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.spec = spec
        self.formatter = formatter
        self.progress = DownloadProgress(spec=spec, name=spec)

    @property
    def download_id(self) -> str | None:
        return self.progress.id

    def compose(self) -> ComposeResult:
        yield Label(self.spec, classes="name")
        yield ProgressBar(total=None, show_eta=False, show_percentage=True)
        yield Label("", classes="bytes")
        yield Label("", classes="rate")
        yield Label("", classes="eta")
        yield Label("queued", classes="state")

    def on_mount(self) -> None:
        self.show(self.progress)

    def show(self, progress: DownloadProgress) -> None:
        self.progress = progress
        if not self.is_mounted:
            return
        fmt = self.formatter
        name = progress.name or progress.spec or self.spec
        if progress.files_total > 1:
            name += f" ({progress.files_done}/{progress.files_total})"
        self.query_one(".name", Label).update(name)
        bar = self.query_one(ProgressBar)
        if progress.total:
            bar.update(total=progress.total, progress=progress.downloaded)
        total = human_bytes(progress.total) if progress.total else "?"
        self.query_one(".bytes", Label).update(f"{human_bytes(progress.downloaded)} / {total}")
        active = progress.state in ("downloading", "stalled", "connecting", "verifying")
        self.query_one(".rate", Label).update(fmt.rate(progress.rate_bps) if active else "")
        self.query_one(".eta", Label).update(fmt.eta(progress.eta_s) if active and progress.state == "downloading" else "")
        text = progress.state
        if progress.state == "failed" and progress.error:
            text = "failed"
            self.tooltip = progress.error
        elif progress.message:
            self.tooltip = progress.message
        state = self.query_one(".state", Label)
        state.update(f"[{STATE_STYLE.get(progress.state, '$foreground')}]{text}[/]")
