"""Hub search with quant choice: search GGUF repos, pick a repo's quant (one row each), Enter
downloads it. A full spec typed in the box (owner/repo:Q4_K_M, owner/repo/file.gguf, hf://...,
https://...) downloads directly."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Static

from abi_tui.client import ClientError
from abi_tui.formatting import human_bytes, human_count

if TYPE_CHECKING:
    from abi_tui.app import AbiApp


def looks_like_spec(text: str) -> bool:
    """A download spec rather than a search query."""
    text = text.strip()
    return (text.startswith(("hf://", "https://", "http://")) or text.lower().endswith(".gguf")
            or (":" in text and "/" in text.split(":", 1)[0]))


class HubSearch(ModalScreen[str | None]):
    BINDINGS = [
        Binding("escape", "close", "Close", id="hub-close"),
        Binding("ctrl+f", "focus_query", "Search box", id="hub-focus-query"),
    ]
    DEFAULT_CSS = """
    HubSearch {
        align: center middle;
    }
    HubSearch > Vertical {
        width: 100;
        max-width: 100%;
        height: 80%;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    HubSearch .title {
        text-style: bold;
    }
    HubSearch .hint, HubSearch #hub-status {
        color: $text-muted;
    }
    HubSearch DataTable {
        height: 1fr;
    }
    """

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Download a model", classes="title")
            yield Input(placeholder="search GGUF repos on the hub, or a spec: owner/repo:Q4_K_M", id="hub-query")
            yield Static("Enter searches (or downloads a spec)", id="hub-status")
            yield DataTable(cursor_type="row", zebra_stripes=True, id="hub-results")
            yield Static("Enter on a row downloads that quant · Tab moves between box and results · Esc closes",
                         classes="hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("Repository", "Quant", "Size", "Files", "Downloads", "Likes")
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if looks_like_spec(text):
            self.dismiss(text)
        else:
            self.search(text)

    @work(exclusive=True, group="hub-search")
    async def search(self, query: str) -> None:
        app: AbiApp = self.app  # type: ignore[assignment]
        status = self.query_one("#hub-status", Static)
        table = self.query_one(DataTable)
        if app.client is None:
            status.update("the server is not up yet")
            return
        status.update(f"searching for {query!r}...")
        try:
            results = await app.client.search(query, limit=20)
        except ClientError as exc:
            if exc.status in (404, 405):
                status.update("this server has no hub search; type a spec (owner/repo:QUANT) instead")
            else:
                status.update(f"[$error]search failed:[/] {exc.message}")
            return
        table.clear()
        rows = 0
        for result in results:
            for quant in result.quants:
                table.add_row(result.repo, quant.quant, human_bytes(quant.size), str(quant.files),
                              human_count(result.downloads), human_count(result.likes),
                              key=quant.spec or f"{result.repo}:{quant.quant}")
                rows += 1
        if rows:
            status.update(f"{len(results)} repos, {rows} quants: pick one and press Enter")
            table.focus()
        else:
            status.update(f"no GGUF repos match {query!r}")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.dismiss(event.row_key.value)

    def action_focus_query(self) -> None:
        self.query_one(Input).focus()

    def action_close(self) -> None:
        self.dismiss(None)
