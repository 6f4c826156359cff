"""Models pane: cached models, GGUF details and memory estimate, hub search and
downloads with progress (pause, resume, cancel), remove with confirmation, load."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.css.query import NoMatches
from textual.timer import Timer
from textual.widgets import DataTable, Static

from abi_tui.client import ClientError, DownloadProgress, ModelEntry, ServerEvent
from abi_tui.connection import LinkStatus
from abi_tui.formatting import human_bytes, human_count, human_ctx
from abi_tui.panes.base import Pane
from abi_tui.widgets.download_row import DownloadRow

COLUMNS = ("Name", "Quant", "Size", "Params", "Ctx", "Source", "Loaded")
EMBEDDING_MARK = "(embedding)"  # after the name of a model that computes embeddings, not chat
# Events that change what is loaded, so the table's Loaded column must be redrawn.
LOADED_EVENTS = ("model.ready", "model.unloaded", "model.removed", "pool.changed", "reload.done", "reload.failed")


class ModelsPane(Pane):
    PANE_ID = "models"
    TITLE = "Models"
    BINDINGS = [
        Binding("d", "download", "Download", id="models-download"),
        Binding("l", "load", "Load", id="models-load"),
        Binding("x,delete", "remove", "Remove", id="models-remove"),
        Binding("p", "pause", "Pause", id="models-pause", show=False),
        Binding("r", "resume", "Resume", id="models-resume", show=False),
        Binding("c", "cancel", "Cancel download", id="models-cancel", show=False),
        Binding("ctrl+r", "refresh", "Refresh", id="models-refresh", show=False),
    ]
    COMMANDS = (
        ("Models: download from the hub", "Search the hub and pick a quant to download", "download"),
        ("Models: load the selected model", "Swap the server to the highlighted cached model", "load"),
        ("Models: remove the selected model", "Delete the highlighted model's files (asks first)", "remove"),
        ("Models: pause download", "Pause the focused (or latest) download", "pause"),
        ("Models: resume download", "Resume the focused (or latest) paused download", "resume"),
        ("Models: cancel download", "Cancel the focused (or latest) download", "cancel"),
        ("Models: refresh", "List the cached models again", "refresh"),
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.models: dict[str, ModelEntry] = {}
        self.rows: dict[str, DownloadRow] = {}  # by spec, and by download id once known
        self.info_cache: dict[str, ModelEntry] = {}  # name -> details with the memory estimate
        self._info_pending: str | None = None
        self._refresh_timer: Timer | None = None
        self._was_up = False
        self._listing = False  # a GET /api/models is in flight
        self._list_again = False  # something changed while it was: list once more when it ends
        self._row_serial = 0
        self.shown_budget: int | None = None  # the pool budget the details were drawn with

    def compose(self) -> ComposeResult:
        with Horizontal(id="models-top"):
            with Vertical(id="models-left") as left:
                left.border_title = "Cached models"
                left.border_subtitle = "Enter load · d download · x remove"
                yield DataTable(cursor_type="row", zebra_stripes=True, id="models-table")
            with VerticalScroll(id="models-info-box") as box:
                box.border_title = "Details"
                yield Static("", id="model-info")
        with Vertical(id="downloads") as downloads:
            downloads.border_title = "Downloads"
            downloads.border_subtitle = "p pause · r resume · c cancel"
            yield Static("No downloads. Press d to search the hub.", id="downloads-empty")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.show_info(None)

    # -- server -------------------------------------------------------------------------------
    def server_status(self, status: LinkStatus) -> None:
        if self.abi.pool.get("budget_bytes") != self.shown_budget:
            self.load_info(self.selected_name())  # the fit verdict depends on the pool's budget
        up = status.connected
        if up and not self._was_up:
            self.schedule_refresh(0)
            self.load_downloads()
        self._was_up = up

    @work(exclusive=True, group="models-downloads")
    async def load_downloads(self) -> None:
        """Downloads already running (started before the dashboard, or by another client)."""
        if self.client is None:
            return
        try:
            running = await self.client.downloads()
        except ClientError:
            return
        with suppress(NoMatches):
            for progress in running:
                self.track(progress)

    def server_event(self, event: ServerEvent) -> None:
        if event.replayed:
            return
        if event.type == "model.download" and "state" in event.data:
            self.track(DownloadProgress.from_dict(event.data))
        elif event.type in LOADED_EVENTS:
            self.schedule_refresh()

    def pane_shown(self) -> None:
        if self.link.connected and not self.models and not self._listing:
            self.schedule_refresh(0)

    # -- cached models ------------------------------------------------------------------------
    def schedule_refresh(self, delay: float = 0.3) -> None:
        """Events come in bursts (loading, ready, pool changed): one listing per burst."""
        if self._refresh_timer is not None:
            self._refresh_timer.stop()
            self._refresh_timer = None
        if delay <= 0:  # a zero-interval Timer divides by zero in Textual
            self.refresh_models()
        else:
            self._refresh_timer = self.set_timer(delay, self.refresh_models)

    def action_refresh(self) -> None:
        self.info_cache.clear()
        self.refresh_models()

    def refresh_models(self) -> None:
        """List the cache now, or once more after the listing in flight. A listing is never
        cancelled: a cancelled one costs the server the same work and logs a 499 in its Requests."""
        if self._listing:
            self._list_again = True
        else:
            self._listing = True
            self.list_models()

    @work(group="models-list")
    async def list_models(self) -> None:
        try:
            while self.client is not None:
                self._list_again = False
                try:
                    models = await self.client.models()
                except ClientError as exc:
                    message = exc.message
                    if exc.status == 404 and "no such route" in message:
                        message = "this server has no model cache API (GET /api/models)"
                    with suppress(NoMatches):  # the app may be closing under this worker
                        self.query_one("#model-info", Static).update(f"[$error]Cannot list models:[/] {message}")
                    return
                with suppress(NoMatches):
                    self.fill(models)
                if not self._list_again:
                    return
        finally:
            self._listing = False

    def fill(self, models: list[ModelEntry]) -> None:
        table = self.query_one(DataTable)
        current = self.selected_name()
        active = self.link.health.model if self.link.health else None
        self.models = {m.name: m for m in models}
        self.info_cache = {k: v for k, v in self.info_cache.items() if k in self.models}
        rows = []
        for model in models:
            loaded = "● active" if model.name == active else ("loaded" if model.loaded else "")
            name = f"{model.name} {EMBEDDING_MARK}" if model.embedding else model.name
            rows.append((name, model.quant or "-", human_bytes(model.size), human_count(model.params),
                         human_ctx(model.context_length), model.source, loaded))
        # Widths from the data, set with the columns: DataTable's own auto width can lag behind
        # a clear() and refill done in one go, and cut names short.
        widths = [max([len(label), *(len(row[i]) for row in rows)]) for i, label in enumerate(COLUMNS)]
        table.clear(columns=True)
        for label, width in zip(COLUMNS, widths, strict=True):
            table.add_column(label, width=width, key=label)
        for model, row in zip(models, rows, strict=True):
            *cells, loaded = row
            table.add_row(*cells, Content.styled(loaded, "bold $success") if loaded else "", key=model.name)
        if not models:
            self.show_info(None)
            return
        names = [m.name for m in models]
        table.move_cursor(row=names.index(current) if current in names else 0)
        self.load_info(self.selected_name())

    def selected_name(self) -> str | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except Exception:  # the cursor sits past the rows after a clear
            return None
        return str(key.value) if key.value is not None else None

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "models-table" and event.row_key.value:
            self.load_info(str(event.row_key.value))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "models-table" and event.row_key.value:
            self.load_model(str(event.row_key.value))

    # -- details ------------------------------------------------------------------------------
    def load_info(self, name: str | None) -> None:
        """Details from the listing at once, then the server's own memory estimate."""
        if name is None or name not in self.models:
            self.show_info(None)
            return
        self.show_info(self.info_cache.get(name) or self.models[name])
        if name not in self.info_cache and self.client is not None and name != self._info_pending:
            self._info_pending = name
            self.fetch_info(name)

    @work(exclusive=True, group="model-info")
    async def fetch_info(self, name: str) -> None:
        assert self.client is not None
        try:
            detailed = await self.client.model_info(name)
        except ClientError:
            return  # the listing's summary is enough to show; the estimate is then computed here
        finally:
            self._info_pending = None
        self.info_cache[name] = detailed
        with suppress(NoMatches):
            if self.selected_name() == name:
                self.show_info(detailed)

    def show_info(self, model: ModelEntry | None) -> None:
        info = self.query_one("#model-info", Static)
        if model is None:
            info.update("No cached models yet.\n\nPress [b]d[/b] to search the hub and download one, or put "
                        "GGUF files in the models folder." if self.link.connected else
                        "Waiting for the server...")
            return
        g = model.gguf or {}
        n_ctx = (self.link.health.context_per_request if self.link.health else None) or 4096
        estimate = model.memory_estimate
        weights = estimate.weights_bytes if estimate else int(g.get("weights_bytes") or model.size)
        total = model.estimated_bytes(n_ctx)
        budget = self.shown_budget = self.abi.pool.get("budget_bytes")
        fits = ("[$success]fits[/]" if total <= budget else "[$error]too big[/]") \
            + f" (budget {human_bytes(budget)})" if budget else "pool budget unknown"
        heads = f"{g.get('head_count') or '-'} (kv {g.get('head_count_kv') or '-'})"

        def row(label: str, value: object) -> str:
            return f"[$text-muted]{label:<14}[/]{value}"

        lines = [
            f"[b]{model.name}[/b]",
            row("file", self.fmt_path(model.path)),
            row("source", model.source + (f" · {model.spec}" if model.spec and model.spec not in (model.name, model.source) else "")),
            row("architecture", (model.architecture or g.get("architecture") or "-")
                + (" · embedding model (vector_store.embedding_model)" if model.embedding else "")),
            row("parameters", human_count(model.params)),
            row("quant", model.quant or g.get("quantization") or "-"),
            row("context", f"{human_ctx(model.context_length)} trained"),
            row("layers", f"{g.get('layers') or '-'} · embedding {g.get('embedding_size') or '-'}"),
            row("heads", heads),
            row("chat template", "yes" if g.get("chat_template") else "no (completion prompts)"),
            row("size", f"{human_bytes(model.size)} in {max(1, len(model.files))} file(s)"),
            row("verified", "sha256 ok" if model.verified else "no"),
            "",
            f"[b]Memory at n_ctx {human_ctx(n_ctx)}[/b]",
            row("weights", human_bytes(weights)),
            row("KV cache", human_bytes(estimate.kv_cache_bytes if estimate else max(0, total - weights))),
            row("total", human_bytes(total)),
            row("fit", fits),
        ]
        info.update("\n".join(lines))

    def fmt_path(self, path: str) -> str:
        if self.fmt.frozen:  # test homes are temporary folders: keep snapshots stable
            return ".../" + "/".join(Path(path).parts[-2:])
        home = str(Path.home())
        return "~" + path[len(home):] if path.startswith(home + "/") else path

    # -- actions on models --------------------------------------------------------------------
    def action_load(self) -> None:
        name = self.selected_name()
        if name:
            self.load_model(name)

    def load_model(self, name: str) -> None:
        active = self.link.health.model if self.link.health else None
        if name == active:
            self.notify(f"{name} is already being served")
            return
        self.abi.swap_model(name)

    def action_remove(self) -> None:
        from abi_tui.dialogs.confirm import ConfirmDialog

        name = self.selected_name()
        if not name:
            return
        model = self.models[name]
        where = "its files and sidecar are deleted" if model.source == "abi" else \
            f"it belongs to {model.source}; the server decides whether abi may delete it"
        message = f"{name} · {model.quant or '-'} · {human_bytes(model.size)}\n\n{where}."

        def answered(yes: bool | None) -> None:
            if yes:
                self.remove_model(name)

        self.app.push_screen(ConfirmDialog(f"Remove {name}?", message), answered)

    @work(group="models-remove")
    async def remove_model(self, name: str) -> None:
        if self.client is None:
            return
        try:
            await self.client.delete_model(name)
        except ClientError as exc:
            self.notify(exc.message, title=f"Could not remove {name}", severity="error", timeout=10)
            return
        self.notify(f"Removed {name}", title="Model removed")
        self.refresh_models()

    # -- downloads ----------------------------------------------------------------------------
    def action_download(self) -> None:
        from abi_tui.dialogs.hub_search import HubSearch

        def chosen(spec: str | None) -> None:
            if spec:
                self.start_download(spec)

        self.app.push_screen(HubSearch(), chosen)

    def start_download(self, spec: str) -> None:
        if self.client is None:
            self.notify("the server is not up yet", severity="warning")
            return
        row = self.rows.get(spec)
        if row is not None and not row.progress.terminal:
            self.notify(f"{spec} is already downloading")
            row.focus()
            return
        row = self.row_for(DownloadProgress(spec=spec, name=spec))
        row.focus()
        self.follow_download(spec)

    @work(group="downloads")
    async def follow_download(self, spec: str) -> None:
        assert self.client is not None
        with suppress(NoMatches):
            try:
                async for progress in self.client.pull(spec):
                    progress.spec = progress.spec or spec
                    self.track(progress)
            except ClientError as exc:
                self.track(DownloadProgress(spec=spec, name=spec, state="failed", error=exc.message))

    def row_for(self, progress: DownloadProgress) -> DownloadRow:
        row = (self.rows.get(progress.id) if progress.id else None) or self.rows.get(progress.spec)
        if row is None or (row.progress.terminal and not progress.terminal and row.download_id != progress.id):
            if row is not None:
                row.remove()
            self._row_serial += 1
            row = DownloadRow(progress.spec, self.fmt, id=f"download-{self._row_serial}")
            self.query_one("#downloads").mount(row)
            self.query_one("#downloads-empty").display = False
        self.rows[progress.spec] = row
        if progress.id:
            self.rows[progress.id] = row
        return row

    def track(self, progress: DownloadProgress) -> None:
        """A progress event from the pull stream or /api/events (the same download may send
        both): update its row, and when it finishes, tell the user and list the cache again."""
        row = self.row_for(progress)
        was_terminal = row.progress.terminal and row.progress.state == progress.state
        row.show(progress)
        if progress.terminal and not was_terminal:
            name = progress.name or progress.spec
            if progress.state == "done":
                self.notify(f"{name} is ready to load", title="Download complete")
                self.schedule_refresh(0)
            elif progress.state == "failed":
                self.notify(progress.error or "download failed", title=f"Download of {name} failed", severity="error",
                            timeout=10)

    def target_row(self, states: tuple[str, ...]) -> DownloadRow | None:
        focused = self.app.focused
        if isinstance(focused, DownloadRow) and focused.progress.state in states:
            return focused
        rows = [r for r in self.query(DownloadRow).results(DownloadRow) if r.progress.state in states]
        return rows[-1] if rows else None

    def action_pause(self) -> None:
        self.control("pause", ("queued", "connecting", "downloading", "stalled"))

    def action_resume(self) -> None:
        self.control("resume", ("paused",))

    def action_cancel(self) -> None:
        self.control("cancel", ("queued", "connecting", "downloading", "stalled", "paused", "verifying"))

    def control(self, action: str, states: tuple[str, ...]) -> None:
        row = self.target_row(states)
        if row is None:
            self.notify(f"no download to {action}", severity="warning")
            return
        self.send_control(row, action)

    @work(group="downloads-control")
    async def send_control(self, row: DownloadRow, action: str) -> None:
        if self.client is None:
            return
        if row.download_id is None:
            self.notify("the server has not said which download this is yet; try again in a moment",
                        severity="warning")
            return
        try:
            await self.client.download_action(row.download_id, action)
        except ClientError as exc:
            if exc.status in (404, 405) and "no such route" in exc.message:
                self.notify(f"this server cannot {action} downloads over its API", severity="warning")
            else:
                self.notify(exc.message, title=f"Could not {action} the download", severity="error")
