"""`?`: every key binding of the dashboard (after the user's `[keys]` remapping), where it
works, and the id to use in config.toml to remap it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

if TYPE_CHECKING:
    from abi_tui.app import AbiApp


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close", id="help-close")]
    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
    }
    HelpScreen > Vertical {
        width: 96;
        max-width: 100%;
        height: 90%;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    HelpScreen .title {
        text-style: bold;
        padding: 0 0 1 0;
    }
    HelpScreen .hint {
        color: $text-muted;
        padding: 1 0 0 0;
    }
    HelpScreen DataTable {
        height: 1fr;
    }
    """

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Keys", classes="title")
            yield DataTable(cursor_type="row", zebra_stripes=True, id="help-table")
            yield Static(Content("Remap any key in $ABI_HOME/config.toml, e.g.  [keys]  switch-model = \"ctrl+o\"   "
                                 "·   Esc closes"), classes="hint")

    def on_mount(self) -> None:
        app: AbiApp = self.app  # type: ignore[assignment]
        table = self.query_one(DataTable)
        table.add_columns("Key", "Action", "Where", Text("Id (for [keys])"))
        for where, binding in app.binding_catalogue():
            table.add_row(app.key_label(binding), binding.description or binding.action, where, binding.id or "")
        table.focus()

    def action_close(self) -> None:
        self.dismiss(None)
