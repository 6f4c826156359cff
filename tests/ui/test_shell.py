"""The dashboard's shell, driven with the keyboard through Textual's pilot against a real server:
panes, help, palette, themes, remapped keys, the embedded server start-up, server down/back."""

from __future__ import annotations

import asyncio
import socket
import tomllib

from textual.command import CommandPalette
from textual.widgets import DataTable

from abi_tui.app import PANES, AbiApp
from abi_tui.config import load_settings
from abi_tui.dialogs.help import HelpScreen
from abi_tui.dialogs.switcher import ModelSwitcher
from abi_tui.widgets.header import StatusHeader

from .conftest import SIZE, wait_for


def header_text(app: AbiApp) -> str:
    return app.query_one(StatusHeader).render_status(app.link).plain


async def test_every_pane_is_one_key_away(ui_server, make_app):
    server = ui_server()
    app = make_app(server)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.link.connected and app.link.health is not None, what="connection")
        assert "ready" in header_text(app) and "model tiny" in header_text(app)
        # The alt key works everywhere, also while a text box has the focus (the Chat pane's does).
        for spec in PANES:
            await pilot.press(spec.alt_key)
            assert app.active_pane == spec.id
        # The plain digit wherever no text box takes it.
        for key, pane in (("5", "server"), ("2", "models"), ("5", "server")):
            await pilot.press(key)
            assert app.active_pane == pane
        for spec in PANES:
            assert app.pane(spec.id).is_mounted and app.pane(spec.id).children, f"the {spec.title} pane is empty"


async def test_help_lists_every_binding_with_its_id(ui_server, make_app):
    app = make_app(ui_server())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1")  # works in a text box too
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape", "alt+m", "question_mark")
        assert isinstance(app.screen, HelpScreen)
        table = app.screen.query_one(DataTable)
        ids = {str(table.get_row_at(i)[3]) for i in range(table.row_count)}
        every = {b.id for _, b in app.binding_catalogue()}
        assert None not in every, "every binding has an id"
        assert every <= ids
        assert {"pane-models", "switch-model", "help", "theme", "quit", "models-download", "models-remove",
                "models-pause", "models-resume", "models-cancel", "server-refresh"} <= ids
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_palette_holds_every_action(ui_server, make_app):
    app = make_app(ui_server())
    async with app.run_test(size=SIZE) as pilot:
        titles = [command.title for command in app.get_system_commands(app.screen)]
        for expected in ("Go to Chat", "Go to Models", "Go to GPU", "Go to Bench", "Go to Server", "Switch model",
                         "Help: keys", "Theme: ABI dark", "Theme: ABI light", "Quit", "Models: download from the hub",
                         "Models: remove the selected model", "Models: pause download", "Server: refresh"):
            assert expected in titles
        await pilot.press("ctrl+p")
        assert isinstance(app.screen, CommandPalette)
        await pilot.press(*"go to server", "enter")
        await wait_for(pilot, lambda: app.active_pane == "server", what="the server pane")


async def test_keys_are_remapped_from_config(ui_server, make_app, abi_home):
    (abi_home / "config.toml").write_text('[keys]\nswitch-model = "ctrl+o"\npane-server = "f5"\nno-such-id = "x"\n')
    app = make_app(ui_server())
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.link.connected, what="connection")
        assert any("no-such-id" in n.message for n in app._notifications)
        await pilot.press("f5")
        assert app.active_pane == "server"
        await pilot.press("alt+m", "m")
        assert not isinstance(app.screen, ModelSwitcher), "the old key no longer switches"
        await pilot.press("ctrl+o")
        assert isinstance(app.screen, ModelSwitcher)
        await pilot.press("escape")
        await pilot.press("question_mark")
        table = app.screen.query_one(DataTable)
        rows = {str(table.get_row_at(i)[3]): str(table.get_row_at(i)[0]) for i in range(table.row_count)}
        assert rows["switch-model"] == "^o" and rows["pane-server"] == "f5"


async def test_theme_is_switchable_and_remembered(ui_server, make_app, abi_home):
    app = make_app(ui_server())
    async with app.run_test(size=SIZE) as pilot:
        assert app.theme == "abi-dark"
        await pilot.press("ctrl+p", *"abi light", "enter")
        await wait_for(pilot, lambda: app.theme == "abi-light", what="the light theme")
    assert tomllib.loads((abi_home / "config.toml").read_text())["ui"]["theme"] == "abi-light"
    again = AbiApp(load_settings(), url="http://127.0.0.1:9")  # no server needed to pick the theme
    async with again.run_test(size=SIZE):
        assert again.theme == "abi-light"
    assert {"abi-dark", "abi-light", "textual-dark", "nord"} <= set(app.available_themes)


async def test_embedded_server_takes_a_free_port_when_the_default_is_taken(cached, abi_home):
    """`abi dash`'s path: the app starts EmbeddedServer itself after the first paint."""
    from abi_tui.server.main import EmbeddedServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = load_settings({"server.port": port, "server.model": str(cached["tiny"]), "server.threads": 1,
                                  "server.n_ctx": 512})
        app = AbiApp(settings, embedded=EmbeddedServer)
        async with app.run_test(size=SIZE) as pilot:
            assert "starting" in header_text(app)
            await wait_for(pilot, lambda: app.link.connected and app.link.health is not None
                           and app.link.health.state == "ready", timeout=30, what="embedded server")
            assert app.link.url and not app.link.url.endswith(f":{port}")
            assert "model tiny" in header_text(app)
        app.embedded.stop()


async def test_server_down_then_back(serve_process, make_app):
    """The server process dies (SIGKILL): the dashboard says so, keeps working, and reconnects
    when a server comes back on the same port."""
    server = serve_process()
    app = make_app(server)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.link.connected and app.link.health is not None, what="connection")
        server.kill()
        await wait_for(pilot, lambda: app.link.phase == "down", what="server down")
        assert "server down" in header_text(app)
        assert "connection refused" in header_text(app) or "closed" in header_text(app)
        assert any("Server down" == n.title for n in app._notifications)
        await pilot.press("alt+s")  # the dashboard keeps working while the server is away
        assert app.active_pane == "server"
        await pilot.press("ctrl+l", "escape", "alt+m")
        await asyncio.to_thread(server.start)  # same port
        await wait_for(pilot, lambda: app.link.connected and app.link.health is not None
                       and app.link.health.state == "ready", what="reconnection")
        assert "ready" in header_text(app)
        # Textual delivers a notification as a message, after the state change that sent it.
        await wait_for(pilot, lambda: any("Reconnected" in n.message for n in app._notifications),
                       what="the reconnection notice")


async def test_embedded_server_that_cannot_start_is_reported(abi_home):
    from abi_tui.server.main import EmbeddedServer

    settings = load_settings({"server.host": "0.0.0.0", "server.port": 0})
    app = AbiApp(settings, embedded=EmbeddedServer)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.link.phase == "failed", timeout=30, what="the failure")
        assert "● error" in header_text(app) and "refusing to listen on 0.0.0.0" in header_text(app)
        assert any("--token" in n.message for n in app._notifications)
        await pilot.press("alt+s", "question_mark")  # still a working dashboard
        assert isinstance(app.screen, HelpScreen)


async def test_the_footer_shows_the_pane_keys_and_rebuilds_only_when_they_change(ui_server, make_app):
    from textual.widgets._footer import FooterKey

    from abi_tui.widgets.footer import KeysFooter

    app = make_app(ui_server())
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.link.connected, what="connection")
        await pilot.press("escape", "2")
        await pilot.pause(0.3)
        footer = app.query_one(KeysFooter)

        def shown() -> set[str]:
            return {key.description for key in footer.query(FooterKey)
                    if key.description and not key.has_class("-command-palette")}

        def wanted() -> set[str]:
            return {b.description for _, b, _, _ in app.screen.active_bindings.values() if b.show and b.description}

        assert shown() == wanted()
        rebuilds = []
        original = footer.recompose

        async def counted() -> None:
            rebuilds.append(app.active_pane)
            await original()

        footer.recompose = counted  # type: ignore[method-assign]
        for _ in range(3):  # the signal, with the same keys to show
            footer.bindings_changed(app.screen)
        await pilot.pause(0.2)
        assert rebuilds == []
        await pilot.press("1")  # the Chat pane: its message box has other keys
        await wait_for(pilot, lambda: rebuilds and shown() == wanted(), what="the Chat pane's keys")
        assert shown() != set() and rebuilds == ["chat"]
