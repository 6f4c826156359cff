"""The model switcher, reachable from every pane: a fuzzy list of cached models with size,
quant and whether each fits the pool's memory budget. Enter returns the chosen model's name;
the app runs the swap (/admin/reload) in a worker and shows its progress in the header."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import TYPE_CHECKING

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.css.query import NoMatches
from textual.fuzzy import Matcher
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from abi_tui.client import ClientError, ModelEntry
from abi_tui.formatting import human_bytes

if TYPE_CHECKING:
    from abi_tui.app import AbiApp


class ModelSwitcher(ModalScreen[str | None]):
    BINDINGS = [
        Binding("escape", "close", "Close", id="switcher-close"),
        Binding("down", "move(1)", "Next", show=False, id="switcher-down"),
        Binding("up", "move(-1)", "Previous", show=False, id="switcher-up"),
    ]
    DEFAULT_CSS = """
    ModelSwitcher {
        align: center top;
    }
    ModelSwitcher > Vertical {
        width: 92;
        max-width: 100%;
        height: auto;
        max-height: 80%;
        margin-top: 3;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    ModelSwitcher .title {
        text-style: bold;
    }
    ModelSwitcher .hint {
        color: $text-muted;
    }
    ModelSwitcher OptionList {
        height: auto;
        max-height: 20;
        border: none;
        padding: 0;
    }
    """

    def __init__(self) -> None:
        super().__init__()
        self.models: list[ModelEntry] = []
        self.budget: int | None = None
        self.n_ctx: int | None = None
        self.active: str | None = None
        self._typed = False

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Switch model", classes="title")
            yield Input(placeholder="type to filter cached models", id="switcher-filter")
            yield OptionList(id="switcher-list")
            yield Static("Enter swaps (drains streams first) · ↑↓ move · Esc closes", classes="hint", id="switcher-hint")

    def on_mount(self) -> None:
        app: AbiApp = self.app  # type: ignore[assignment]
        self.active = app.link.health.model if app.link.health else None
        self.query_one(OptionList).add_option(Option("loading cached models...", disabled=True))
        self.load()

    @work(exclusive=True, group="switcher-load")
    async def load(self) -> None:
        app: AbiApp = self.app  # type: ignore[assignment]
        options = self.query_one(OptionList)
        if app.client is None:
            options.clear_options()
            options.add_option(Option("the server is not up yet", disabled=True))
            return
        client = app.client
        try:
            models = await client.models()
            health = await client.health()
        except ClientError as exc:
            options.clear_options()
            options.add_option(Option(f"cannot list models: {exc.message}", disabled=True))
            return
        self.active = health.model
        self.n_ctx = health.context_per_request or app.settings.server.n_ctx
        self.budget = app.pool.get("budget_bytes")
        self.models = models
        self.refill()
        # The server's own estimates (weights + KV at its n_ctx), a request per model, together.
        details = await asyncio.gather(*(client.model_info(m.name) for m in models[:50]), return_exceptions=True)
        for model, detail in zip(models, details, strict=False):
            if not isinstance(detail, BaseException) and detail.memory_estimate is not None:
                model.memory_estimate = detail.memory_estimate
        with suppress(NoMatches):  # closed while the estimates were on their way
            self.refill()

    def fits(self, model: ModelEntry) -> bool | None:
        if not self.budget:
            return None
        return model.estimated_bytes(self.n_ctx) <= self.budget

    def refill(self) -> None:
        query = self.query_one(Input).value.strip()
        matcher = Matcher(query) if query else None
        scored: list[tuple[float, ModelEntry]] = []
        for model in self.models:
            score = matcher.match(model.name) if matcher else 1.0
            if score > 0:
                scored.append((score, model))
        scored.sort(key=lambda item: (-item[0], item[1].name.lower()))
        options = self.query_one(OptionList)
        current = options.highlighted
        keep = options.get_option_at_index(current).id if current is not None and current < options.option_count else None
        options.clear_options()
        if not scored:
            options.add_option(Option("no cached model matches" if self.models else
                                      "no cached models: download one in the Models pane (2, then d)", disabled=True))
            return
        for _, model in scored:
            name = matcher.highlight(model.name) if matcher else Content(model.name)
            fit = self.fits(model)
            fit_text = ("fits" if fit else "too big") if fit is not None else "fit ?"
            estimate = model.estimated_bytes(self.n_ctx)
            mark = "● active" if model.name == self.active else ("loaded" if model.loaded else "")
            prompt = Content.assemble(
                name.truncate(30, ellipsis=True, pad=True),
                "  ", ((model.quant or "-").ljust(8), "$text-muted"),
                "  ", (human_bytes(model.size).rjust(9), ""),
                "  ", (f"{fit_text} {human_bytes(estimate)}".ljust(19), "$success" if fit else ("$error" if fit is False else "$text-muted")),
                "  ", (mark, "bold $accent"),
            )
            options.add_option(Option(prompt, id=model.name))
        ids = [model.name for _, model in scored]
        # Typing re-ranks from the top; a redraw with new estimates keeps the user's place.
        options.highlighted = ids.index(keep) if keep in ids and not self._typed else 0
        self._typed = False

    def on_input_changed(self, event: Input.Changed) -> None:
        if self.models:
            self._typed = True
            self.refill()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.choose(self.query_one(OptionList).highlighted)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.choose(event.option_index)

    def choose(self, index: int | None) -> None:
        options = self.query_one(OptionList)
        if index is None or index >= options.option_count:
            return
        option = options.get_option_at_index(index)
        if option.disabled or option.id is None:
            return
        self.dismiss(option.id)

    def action_move(self, step: int) -> None:
        options = self.query_one(OptionList)
        if options.option_count:
            current = options.highlighted if options.highlighted is not None else -1
            options.highlighted = max(0, min(options.option_count - 1, current + step))

    def action_close(self) -> None:
        self.dismiss(None)
