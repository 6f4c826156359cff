"""The dashboard: header, five panes, footer, help, command palette, themes, model switcher.

`abi dash` runs its server as a child process (`abi_tui.server.supervisor`, composed in
`cli.py`): the app gets a handle that reports the child's URL, token and restarts, and follows it
through `AbiClient` exactly as `abi dash --connect URL` follows a remote one: /health every
second, /api/events for everything else, reconnecting with backoff when the server goes away.

Pane contract
-------------
- One module per pane, `abi_tui/panes/<pane>.py`, defining a `Pane` subclass
  (`abi_tui/panes/base.py` documents the hooks: `server_status`, `server_event`,
  `pane_shown`, `self.client`, `self.fmt`). `PANES` below names module and class, so a new
  pane changes nothing else here.
- Each Binding has an id `<pane>-<action>` (remappable in `[keys]`) and shows in `?` help;
  `COMMANDS` on the class puts pane actions into the command palette.
- All I/O in workers through `self.client`; never block the UI loop.
"""

from __future__ import annotations

import gc
import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.lazy import Lazy
from textual.message import Message
from textual.screen import Screen
from textual.widgets import TabbedContent, TabPane

from abi_tui.client import (
    CONNECTION_LOST,
    CONNECTION_OPEN,
    AbiClient,
    Backoff,
    ClientError,
    ServerEvent,
)
from abi_tui.config import Settings, save_setting
from abi_tui.connection import (
    InProcessServer,
    LinkStatus,
    ProcessState,
    ReloadStatus,
    SupervisedServer,
)
from abi_tui.formatting import Formatter
from abi_tui.themes import APP_CSS, DEFAULT_THEME, abi_themes
from abi_tui.widgets.footer import KeysFooter
from abi_tui.widgets.header import StatusHeader

if TYPE_CHECKING:
    from abi_tui.panes.base import Pane

log = logging.getLogger("abi.dash")


@dataclass(frozen=True)
class PaneSpec:
    id: str
    title: str
    target: str  # "module:Class"
    key: str
    # A second key that works while a text box has the focus (it takes the digits). Not alt+N:
    # terminals send ESC N, which Textual reads as the macOS option characters (¡ ™ £ ...); and
    # not alt+b or alt+f, which it reads as ctrl+left / ctrl+right (word moves).
    alt_key: str


PANES: tuple[PaneSpec, ...] = (
    PaneSpec("chat", "Chat", "abi_tui.panes.chat:ChatPane", "1", "alt+c"),
    PaneSpec("models", "Models", "abi_tui.panes.models:ModelsPane", "2", "alt+m"),
    PaneSpec("gpu", "GPU", "abi_tui.panes.gpu:GpuPane", "3", "alt+g"),
    PaneSpec("bench", "Bench", "abi_tui.panes.bench:BenchPane", "4", "alt+n"),
    PaneSpec("server", "Server", "abi_tui.panes.server:ServerPane", "5", "alt+s"),
)
# The first pane shown.
DEFAULT_PANE = "chat"
HEALTH_INTERVAL_S = 1.0
FREEZE_AFTER_S = 2.0  # the hidden panes mount after the first frame
RELOAD_STAGES = {"reload.started": "started", "reload.draining": "draining", "reload.drained": "drained",
                 "reload.cancelled": "draining", "reload.loading": "loading", "reload.done": "done",
                 "reload.failed": "failed", "reload.rolled_back": "rolled_back"}


def pane_class(spec: PaneSpec) -> type[Pane]:
    module, _, name = spec.target.partition(":")
    return getattr(importlib.import_module(module), name)


class AbiApp(App[None]):
    TITLE = "abi"
    CSS_PATH = str(APP_CSS)
    ENABLE_COMMAND_PALETTE = True
    # Screen classes for app.tcss: below 120 columns the Models pane stacks its details.
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (120, "-wide")]
    BINDINGS: ClassVar[list[BindingType]] = [
        # The tabs show the pane keys, so the footer does not repeat them.
        *(Binding(p.key, f"show_pane('{p.id}')", p.title, id=f"pane-{p.id}", show=False) for p in PANES),
        # Priority: checked before a focused text box could take the key.
        *(Binding(p.alt_key, f"show_pane('{p.id}')", p.title, id=f"pane-{p.id}-alt", show=False, priority=True)
          for p in PANES),
        Binding("m,ctrl+l", "switch_model", "Model", id="switch-model"),
        Binding("question_mark,f1", "help", "Help", id="help"),
        Binding("ctrl+p", "command_palette", "Palette", id="command-palette", priority=True, show=False),
        Binding("ctrl+t", "change_theme", "Theme", id="theme"),
        Binding("ctrl+q", "quit", "Quit", id="quit", priority=True),
        Binding("ctrl+c", "help_quit", show=False, system=True, id="help-quit"),
    ]

    class ServerProcessChanged(Message):
        """The dashboard's server process started, listens, ended or is restarting (posted from
        the supervisor's thread)."""

        def __init__(self, state: ProcessState) -> None:
            super().__init__()
            self.state = state

    def __init__(self, settings: Settings, *, url: str | None = None, token: str | None = None,
                 admin_token: str | None = None, embedded: Callable[[Settings], InProcessServer] | None = None,
                 server: SupervisedServer | None = None, frozen: bool = False, backoff: Backoff | None = None,
                 health_interval_s: float = HEALTH_INTERVAL_S, persist_theme: bool = True) -> None:
        """The server to follow: `url` (with `token`); or `server`, the handle of the dashboard's
        server process (`.token`, `.watch(callback)`: its URL once it listens, and its restarts);
        or `embedded(settings)`, a server in this process (`InProcessServer`), started after the
        first paint. The caller composes the server (`cli.py`); the app only follows it. `frozen` renders time-dependent values
        as fixed ones (snapshot tests)."""
        super().__init__()
        self.settings = settings
        self.server_process = server
        if server is not None:
            token = server.token
            admin_token = admin_token or settings.server.admin_token or server.token
        self.token = token if token is not None else settings.server.token
        self.admin_token = admin_token or settings.admin_token or self.token
        self.embedded_factory = embedded
        self.embedded: InProcessServer | None = None
        self.fmt = Formatter(frozen=frozen)
        self.backoff = backoff or Backoff()
        self.health_interval_s = health_interval_s
        self.persist_theme = persist_theme
        self.client: AbiClient | None = None
        self.link = LinkStatus(url=url, embedded=url is None, phase="connecting" if url else "starting")
        self.pool: dict[str, Any] = {}  # the latest pool summary (budget_bytes, used_bytes, models)
        self._start_url = url
        self._health_busy = False
        self._was_up = False
        self._keymap_problems: list[str] = []
        for theme in abi_themes():
            self.register_theme(theme)
        self.set_keymap(self._checked_keymap(settings.keys))

    # -- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusHeader(self.fmt, id="status-header")
        with TabbedContent(id="panes", initial=DEFAULT_PANE):
            for spec in PANES:
                with TabPane(f"{self.first_key_label(f'pane-{spec.id}', spec.key)} {spec.title}", id=spec.id):
                    pane = pane_class(spec)(id=f"pane-{spec.id}-body")
                    # Hidden panes mount after the first frame: it appears sooner.
                    yield pane if spec.id == DEFAULT_PANE else Lazy(pane)
        yield KeysFooter()

    def on_mount(self) -> None:
        theme = self.settings.ui.theme
        self.theme = theme if theme in self.available_themes else DEFAULT_THEME
        self.theme_changed_signal.subscribe(self, self._remember_theme)
        for problem in self._keymap_problems:
            self.notify(problem, title="config.toml [keys]", severity="warning", timeout=8)
        self.show_status()
        # After the first frame: neither the network stack nor the server's imports (llama.cpp)
        # may delay the first paint.
        if self._start_url:
            self.call_after_refresh(self.connect, self._start_url)
        elif self.server_process is not None:
            state = self.server_process.watch(lambda state: self.post_message(self.ServerProcessChanged(state)))
            self.server_process_changed(state)
        elif self.embedded_factory is not None:
            self.call_after_refresh(self.start_embedded)
        self.set_interval(self.health_interval_s, self.poll_health)
        self.call_after_refresh(self.show_pane, DEFAULT_PANE)
        self.set_timer(FREEZE_AFTER_S, self._freeze_start_up_objects)

    def _freeze_start_up_objects(self) -> None:
        """Keep the modules, widgets and styles of start-up out of the collector's full passes.
        Those passes walked ~200k objects and stopped the UI for 45-55 ms, the slow tail of a
        pane switch's first frame; frozen, they walk only what came since. Once, after the
        lazy panes have mounted. No collection first: it would be the very pause avoided here,
        and start-up leaves little garbage to keep."""
        gc.freeze()

    # -- panes --------------------------------------------------------------------------------
    @property
    def main_screen(self) -> Screen:
        """The screen holding header and panes (App.query would search a modal on top)."""
        return self.screen_stack[0]

    def panes(self) -> list[Pane]:
        from abi_tui.panes.base import Pane

        if not self.screen_stack:  # closing: nobody left to tell
            return []
        return list(self.main_screen.query(Pane).results(Pane))

    def pane(self, pane_id: str) -> Pane:
        from abi_tui.panes.base import Pane

        return self.main_screen.query_one(f"#pane-{pane_id}-body", Pane)

    def action_show_pane(self, pane_id: str) -> None:
        self.show_pane(pane_id)

    def show_pane(self, pane_id: str) -> None:
        tabs = self.main_screen.query_one(TabbedContent)
        if tabs.active != pane_id:
            tabs.active = pane_id
        else:
            self._pane_activated(pane_id)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id:
            self._pane_activated(event.pane.id)

    def _pane_activated(self, pane_id: str) -> None:
        try:
            pane = self.pane(pane_id)
        except NoMatches:  # still lazy: it is shown (and told) once mounted
            self.call_after_refresh(self._pane_activated, pane_id)
            return
        focusable = [w for w in pane.query("*") if w.focusable]
        if focusable:
            focusable[0].focus()
        else:
            self.set_focus(None)
        pane.pane_shown()

    @property
    def active_pane(self) -> str:
        return self.main_screen.query_one(TabbedContent).active

    # -- keys, help, palette, themes ----------------------------------------------------------
    def _checked_keymap(self, keys: dict[str, Any]) -> dict[str, str]:
        known = {b.id for _, b in self.binding_catalogue() if b.id}
        keymap: dict[str, str] = {}
        for binding_id, key in (keys or {}).items():
            if binding_id not in known:
                self._keymap_problems.append(f"unknown binding id {binding_id!r}; press ? for the list")
            elif not isinstance(key, str) or not key.strip():
                self._keymap_problems.append(f"{binding_id}: the key must be a string such as \"ctrl+o\"")
            else:
                keymap[binding_id] = key.strip()
        return keymap

    def binding_catalogue(self) -> list[tuple[str, Binding]]:
        """Every binding of the dashboard with where it works: the help screen lists these."""
        from abi_tui.dialogs.confirm import ConfirmDialog
        from abi_tui.dialogs.help import HelpScreen
        from abi_tui.dialogs.hub_search import HubSearch
        from abi_tui.dialogs.switcher import ModelSwitcher

        found: list[tuple[str, Binding]] = []

        def add(where: str, bindings: Iterable[BindingType]) -> None:
            found.extend((where, b) for b in bindings if isinstance(b, Binding) and not b.system)

        add("everywhere", type(self).BINDINGS)
        for spec in PANES:
            add(f"{spec.title} pane", pane_class(spec).BINDINGS)
        add("model switcher", ModelSwitcher.BINDINGS)
        add("hub search", HubSearch.BINDINGS)
        add("confirm dialog", ConfirmDialog.BINDINGS)
        add("help", HelpScreen.BINDINGS)
        return found

    def key_label_for(self, binding_id: str, default: str) -> str:
        """The keys of a binding as shown to users, after the user's remapping."""
        declared = next((b.key for b in type(self).BINDINGS if isinstance(b, Binding) and b.id == binding_id), default)
        keys = self._keymap.get(binding_id, declared)
        return " / ".join(self.get_key_display(Binding(k.strip(), "")) for k in keys.split(","))

    def first_key_label(self, binding_id: str, default: str) -> str:
        return self.key_label_for(binding_id, default).split(" / ")[0]

    def key_label(self, binding: Binding) -> str:
        return self.key_label_for(binding.id or "", binding.key)

    def action_help(self) -> None:
        from abi_tui.dialogs.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The command palette: every action of the dashboard, pane actions included."""
        for spec in PANES:
            keys = f"{self.key_label_for(f'pane-{spec.id}', spec.key)} / {self.key_label_for(f'pane-{spec.id}-alt', spec.alt_key)}"
            yield SystemCommand(f"Go to {spec.title}", f"Show the {spec.title} pane  [{keys}]",
                                partial(self.show_pane, spec.id))
        yield SystemCommand("Switch model", f"Swap the served model  [{self.key_label_for('switch-model', 'm')}]",
                            self.action_switch_model)
        for spec in PANES:
            for title, help_text, action in pane_class(spec).COMMANDS:
                yield SystemCommand(title, help_text, partial(self._pane_action, spec.id, action))
        yield SystemCommand("Help: keys", f"Every key binding and its id  [{self.key_label_for('help', '?')}]", self.action_help)
        yield SystemCommand("Theme: ABI dark", "Use the ABI dark theme", partial(setattr, self, "theme", "abi-dark"))
        yield SystemCommand("Theme: ABI light", "Use the ABI light theme", partial(setattr, self, "theme", "abi-light"))
        yield SystemCommand("Theme: choose...", f"Pick any theme, Textual's included  [{self.key_label_for('theme', 'ctrl+t')}]",
                            self.action_change_theme)
        yield SystemCommand("Reconnect", "Reconnect to the server now", self.action_reconnect)
        yield SystemCommand("Keys panel", "Show or hide the keys of the focused widget",
                            self.action_hide_help_panel if screen.query("HelpPanel") else self.action_show_help_panel)
        yield SystemCommand("Screenshot", "Save an SVG screenshot of the screen",
                            lambda: self.set_timer(0.1, self.deliver_screenshot))
        yield SystemCommand("Quit", f"Leave the dashboard  [{self.key_label_for('quit', 'ctrl+q')}]", self.action_quit)

    def _pane_action(self, pane_id: str, action: str) -> None:
        self.show_pane(pane_id)
        self.call_later(self.run_action, action, self.pane(pane_id))

    def _remember_theme(self, theme: Any) -> None:
        if self.persist_theme and theme.name != self.settings.ui.theme:
            try:
                save_setting(self.settings, "ui.theme", theme.name)
            except OSError as exc:
                self.notify(f"could not save the theme: {exc}", severity="warning")

    # -- server connection --------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="embedded")
    def start_embedded(self) -> None:
        assert self.embedded_factory is not None
        server = self.embedded_factory(self.settings)
        try:
            url = server.start()
        except Exception as exc:  # BindError and friends: say so, keep the UI up
            message = getattr(exc, "message", None) or str(exc)
            log.error("embedded server did not start: %s", message)
            self.call_from_thread(self._embedded_failed, message)
            return
        self.embedded = server
        log.info("embedded server listening on %s", url)
        self.call_from_thread(self.connect, url)

    def on_abi_app_server_process_changed(self, message: ServerProcessChanged) -> None:
        self.server_process_changed(message.state)

    def server_process_changed(self, state: ProcessState) -> None:
        self.link.process = state
        if state.phase == "ready" and state.url and (state.url != self.link.url or self.link.phase != "up"):
            self.connect(state.url)  # at once, not at the client's next reconnect attempt
        else:
            self.show_status()

    def _embedded_failed(self, message: str) -> None:
        self.link.phase, self.link.error = "failed", f"embedded server did not start: {message}"
        self.show_status()
        self.notify(self.link.error, severity="error", timeout=15)

    def connect(self, url: str) -> None:
        if self.client is not None:
            self.run_worker(self.client.close(), group="close-client")
        self.client = AbiClient(url, self.token, admin_token=self.admin_token)
        self.link.url, self.link.phase, self.link.error = url, "connecting", None
        self.show_status()
        self.follow_events()
        self.poll_health()

    def action_reconnect(self) -> None:
        if self.link.url:
            self.connect(self.link.url)

    @work(exclusive=True, group="events")
    async def follow_events(self) -> None:
        assert self.client is not None
        try:
            async for event in self.client.events(since="all", backoff=self.backoff):
                self.handle_event(event)
        except ClientError as exc:  # a wrong token: retrying will not help
            self.link.phase, self.link.error = "failed", exc.message
            self.show_status()
            self.notify(exc.message, title="Server refused the dashboard", severity="error", timeout=15)

    def handle_event(self, event: ServerEvent) -> None:
        if event.type == CONNECTION_OPEN:
            self._went_up()
            self.poll_health()
            self.refresh_pool()
        elif event.type == CONNECTION_LOST:
            self._went_down(str(event.data.get("error") or "connection lost"), event.data.get("retry_in_s"))
        elif event.type in RELOAD_STAGES and not event.replayed:
            self._reload_event(event)
        elif event.type == "pool.changed" and not event.replayed:
            self.pool = {**self.pool, **event.data}
        if event.type.startswith(("model.", "reload.", "pool.")) and not event.replayed:
            self.poll_health()
        for pane in self.panes():
            try:
                pane.server_event(event)
            except Exception:  # one pane's bug must not stop the others from hearing events
                log.exception("pane %s failed on event %s", pane.PANE_ID, event.type)

    def _went_up(self) -> None:
        if self.link.phase != "up":
            self.link.phase, self.link.error, self.link.retry_in_s = "up", None, None
            if self._was_up:
                self.notify(f"Reconnected to {self.fmt.address(self.link.url)}", title="Server back")
            self._was_up = True
        self.show_status()

    def _went_down(self, error: str, retry_in_s: float | None = None) -> None:
        was_up = self.link.phase == "up"
        self.link.phase, self.link.retry_in_s = "down", retry_in_s
        self.link.error = self.fmt.scrub(error, self.link.url)
        if was_up:
            self.notify(f"{self.link.error}. The dashboard keeps working and reconnects when the server returns.",
                        title="Server down", severity="warning", timeout=8)
        self.show_status()

    def poll_health(self) -> None:
        if self.client is not None and not self._health_busy and self.link.phase != "failed":
            self._health_busy = True
            self.fetch_health()

    @work(group="health")
    async def fetch_health(self) -> None:
        try:
            assert self.client is not None
            health = await self.client.health()
        except ClientError as exc:
            if self.link.phase == "up":
                self._went_down(exc.message)
            return
        finally:
            self._health_busy = False
        changed = health != self.link.health
        self.link.health = health
        if self.link.phase in ("connecting", "down"):
            self._went_up()
        elif changed:
            self.show_status()

    @work(exclusive=True, group="pool")
    async def refresh_pool(self) -> None:
        if self.client is None:
            return
        try:
            latest = (await self.client.telemetry()).get("latest") or {}
        except ClientError:
            return
        if isinstance(latest.get("pool"), dict):
            self.pool = latest["pool"]
            self.show_status()

    def show_status(self) -> None:
        if not self.is_mounted or not self.screen_stack:
            return
        header = self.main_screen.query(StatusHeader)
        if not header:  # not composed yet, or already torn down at exit
            return
        header.first().show(self.link)
        for pane in self.panes():
            try:
                pane.server_status(self.link)
            except Exception:
                log.exception("pane %s failed on a status update", pane.PANE_ID)

    # -- model switching ----------------------------------------------------------------------
    def action_switch_model(self) -> None:
        from abi_tui.dialogs.switcher import ModelSwitcher

        if isinstance(self.screen, ModelSwitcher):
            return

        def chosen(name: str | None) -> None:
            if name:
                self.swap_model(name)

        self.push_screen(ModelSwitcher(), chosen)

    def swap_model(self, name: str) -> None:
        """Swap the served model through /admin/reload, without blocking; progress shows in
        the header (from reload.* events), the outcome as a notification."""
        if self.client is None or self.link.phase != "up":
            self.notify("the server is not reachable; the swap can run when it is back", severity="warning")
            return
        if self.link.reload is not None and not self.link.reload.finished:
            self.notify(f"a swap to {self.link.reload.target} is still running", severity="warning")
            return
        self.link.reload = ReloadStatus(target=name)
        self.show_status()
        self.run_swap(name)

    @work(group="swap")
    async def run_swap(self, name: str) -> None:
        assert self.client is not None
        reload = self.link.reload
        try:
            result = await self.client.reload(name)
        except ClientError as exc:
            if reload is not None:
                reload.finished, reload.ok = True, False
                reload.stage = "rolled_back" if "rolled back" in exc.message else "failed"
                reload.detail = reload.detail or (exc.code or "")
            self.notify(exc.message, title=f"Could not swap to {name}", severity="error", timeout=12)
        else:
            if reload is not None:
                reload.finished, reload.ok, reload.stage = True, True, "done"
                reload.detail = "already resident" if result.resident else f"loaded in {self.fmt.ms(result.load_ms)}"
            drained = f", {result.drained} streams drained" if result.drained else ""
            cancelled = f", {result.cancelled} cancelled" if result.cancelled else ""
            self.notify(f"Now serving {result.model} (was {result.previous_model or 'none'}{drained}{cancelled})",
                        title="Model swapped")
        self.poll_health()
        self.show_status()
        self.set_timer(10, partial(self._clear_reload, reload))

    def _clear_reload(self, reload: ReloadStatus | None) -> None:
        if reload is not None and self.link.reload is reload:
            self.link.reload = None
            self.show_status()

    def _reload_event(self, event: ServerEvent) -> None:
        data = event.data
        reload = self.link.reload
        target = data.get("model")
        if reload is None or reload.finished:
            if event.type != "reload.started" or not target:
                return
            reload = self.link.reload = ReloadStatus(target=str(target))  # a swap someone else asked for
        stage = RELOAD_STAGES[event.type]
        if event.type == "reload.draining":
            reload.detail = f"{data.get('streams', 0)} streams, up to {data.get('timeout_s', 0):g} s"
        elif event.type == "reload.cancelled":
            reload.detail = f"{data.get('streams', 0)} cancelled"
        elif event.type == "reload.rolled_back":
            reload.detail = f"back to {data.get('model')}"
            reload.ok = False
        elif event.type == "reload.failed":
            reload.finished, reload.ok = True, False
            back = data.get("rolled_back_to")
            error = str(data.get("error") or "")
            reload.detail = f"rolled back to {back}" if back and not data.get("rollback_error") else error[:60]
            if back and not data.get("rollback_error"):
                stage = "rolled_back"
        elif event.type == "reload.done":
            reload.finished, reload.ok = True, True
            reload.detail = "already resident" if data.get("resident") else f"loaded in {self.fmt.ms(data.get('load_ms'))}"
        else:
            reload.detail = ""
        if reload.stage != "rolled_back" or event.type != "reload.failed":
            reload.stage = stage
        self.show_status()

    # -- shutdown -----------------------------------------------------------------------------
    async def on_unmount(self) -> None:
        gc.unfreeze()  # a process that goes on (a test run) collects them again
        if self.client is not None:
            await self.client.close()


def configure_dash_logging(settings: Settings) -> None:
    """The embedded server logs to $ABI_HOME/logs/dash.log: a line on stderr would tear the UI."""
    try:
        settings.logs_dir.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(settings.logs_dir / "dash.log")
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def run_app(settings: Settings, connect: str | None = None, token: str | None = None,
            server: SupervisedServer | None = None) -> int:
    """`abi dash` (`server`: its server process, started and stopped by the caller) or
    `abi dash --connect URL [--token T]`."""
    configure_dash_logging(settings)
    app = AbiApp(settings, url=connect, token=token, server=server)
    app.run()
    return app.return_code or 0
