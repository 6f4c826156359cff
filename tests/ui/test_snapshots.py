"""Snapshots (pytest-textual-snapshot) of the dashboard at 110x32, on real data: a server on the
tiny models (pool budget fixed at 8 GiB) and the fake hub. Time-dependent values (clock,
uptime, rates, ETA, the server's random port) are frozen by the app's `frozen` formatter.
Update after an intended change with `pytest tests/ui --snapshot-update`, and look at them."""

from __future__ import annotations

from typing import Any

import pytest
from textual.command import CommandPalette
from textual.widgets import DataTable, OptionList

from abi_tui.app import AbiApp
from abi_tui.dialogs.help import HelpScreen
from abi_tui.dialogs.switcher import ModelSwitcher
from abi_tui.widgets.download_row import DownloadRow
from tests.models.fakehub import Fault

from .conftest import HUB_REPO, SIZE, wait_for

STALL_AT = 131072  # the hub sends this many bytes of the file, then goes quiet for a while


def names(app: AbiApp) -> list[str]:
    table = app.pane("models").query_one("#models-table", DataTable)
    return [str(table.get_row_at(i)[0]) for i in range(table.row_count)]


async def settled(pilot: Any) -> None:
    """Connected, the models listed with details, the pool known: the first screen is complete."""
    app: AbiApp = pilot.app
    await wait_for(pilot, lambda: app.link.connected and app.link.health is not None, what="connection")
    await pilot.press("alt+m")  # every snapshot starts from the Models pane, whatever the first pane is
    await wait_for(pilot, lambda: len(names(app)) >= 2 and app.pool.get("budget_bytes"), what="models and pool")
    pane = app.pane("models")
    await wait_for(pilot, lambda: pane.shown_budget == app.pool["budget_bytes"] and pane.selected_name() in pane.info_cache,
                   what="details with the budget and the server's estimate")
    await pilot.pause(0.3)


def shot(snap_compare, app: AbiApp, press: tuple[str, ...] = (), before: Any = None) -> bool:
    async def run_before(pilot: Any) -> None:
        await settled(pilot)
        if before is not None:
            await before(pilot)

    return snap_compare(app, press=press, terminal_size=SIZE, run_before=run_before)


@pytest.fixture
def dash(ui_server, make_app):
    return make_app(ui_server())


def test_shell_on_the_models_pane(snap_compare, dash):
    """The shell around a pane; the Chat, GPU, Bench and Server panes have snapshots of their own
    (test_chat, test_gpu, test_bench and test_server_pane below) with their data frozen."""
    assert shot(snap_compare, dash)


def test_server_pane(snap_compare, dash):
    async def polled(pilot: Any) -> None:
        # The other panes ask the server for their data as they mount, and the Requests log's
        # first read shows all that the server counted: show the pane once that is over.
        from abi_tui.panes.server import POLLED_ROUTES

        await wait_for(pilot, lambda: pilot.app.client is not None, what="the client")
        seen, previous = None, {}
        while seen != previous:
            previous = seen
            await pilot.pause(0.5)
            samples = await pilot.app.client.metrics()
            seen = {tuple(sorted(labels.items())): value for labels, value in samples.get("abi_requests_total", [])
                    if labels.get("route") not in POLLED_ROUTES}
        await pilot.press("5")
        pane = pilot.app.pane("server")
        await wait_for(pilot, lambda: pane.totals and pane.pool.get("models"), what="counters and pool")
        # The other panes ask the server for their data as they mount: count once that is over.
        previous: dict = {}
        while pane.totals != previous:
            previous = dict(pane.totals)
            await pilot.pause(0.5)
            pane.poll()
            await pilot.pause(0.3)
        await pilot.pause(0.2)

    assert shot(snap_compare, dash, before=polled)


def test_help_screen(snap_compare, dash):
    async def help_shown(pilot: Any) -> None:
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, HelpScreen)
                       and pilot.app.screen.query_one(DataTable).row_count > 20, what="the help table")
        await pilot.pause(0.2)

    assert shot(snap_compare, dash, before=help_shown)


def test_command_palette(snap_compare, dash):
    async def palette_shown(pilot: Any) -> None:
        await pilot.press("ctrl+p")
        # The palette gathers its commands in a worker: wait until the list is full.
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, CommandPalette)
                       and pilot.app.screen.query_one(OptionList).option_count >= 10, what="the command list")
        await pilot.pause(0.3)

    assert shot(snap_compare, dash, before=palette_shown)


def test_models_pane_with_a_download_in_progress(snap_compare, ui_server, make_app, hub):
    """Bytes on disk decide what a progress event says, and the downloader writes in blocks: to
    stop at a known byte count, the hub sends STALL_AT bytes and goes quiet, the user pauses
    (which keeps every byte received), resumes, and the hub sends one byte and goes quiet again."""
    hub.faults += [Fault(stall_after=STALL_AT, stall_s=4, path="pico-Q8_0"),
                   Fault(stall_after=1, stall_s=4, path="pico-Q8_0")]
    app = make_app(ui_server())

    async def downloading(pilot: Any) -> None:
        await pilot.press("2", "d", *f"{HUB_REPO}:Q8_0", "enter")
        pane = pilot.app.pane("models")
        await wait_for(pilot, lambda: pane.query(DownloadRow), what="the download row")
        row = pane.query_one(DownloadRow)
        await wait_for(pilot, lambda: row.progress.state == "downloading", what="downloading")
        await pilot.press("p")
        await wait_for(pilot, lambda: row.progress.state == "paused" and row.progress.downloaded == STALL_AT,
                       what="paused at the stall point")
        await pilot.press("r")
        await wait_for(pilot, lambda: row.progress.state == "downloading" and len(hub.file_requests("pico-Q8_0")) == 2,
                       what="downloading again")
        assert row.progress.downloaded == STALL_AT
        await pilot.pause(0.2)

    assert shot(snap_compare, app, before=downloading)


def test_remove_dialog(snap_compare, dash):
    async def select_tiny_b(pilot: Any) -> None:
        await pilot.press("2")
        table = pilot.app.pane("models").query_one("#models-table", DataTable)
        await pilot.press(*["down"] * (names(pilot.app).index("tiny-b") - table.cursor_row))
        await pilot.press("x")

    assert shot(snap_compare, dash, before=select_tiny_b)


def test_model_switcher(snap_compare, dash):
    async def open_switcher(pilot: Any) -> None:
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, ModelSwitcher) and pilot.app.screen.models
                       and pilot.app.screen.budget, what="the switcher's list")
        await pilot.press("t", "i")

    assert shot(snap_compare, dash, before=open_switcher)


def test_server_down(snap_compare, serve_process, make_app):
    server = serve_process()
    app = make_app(server)

    async def kill(pilot: Any) -> None:
        server.kill()
        await wait_for(pilot, lambda: app.link.phase == "down" and "refused" in (app.link.error or ""),
                       what="server down")
        app.clear_notifications()  # the first toast's wording depends on which request noticed first
        await pilot.pause(0.2)

    assert shot(snap_compare, app, before=kill)


@pytest.mark.parametrize("theme", ["abi-dark", "abi-light"])
def test_abi_themes(snap_compare, ui_server, make_app, abi_home, theme):
    (abi_home / "config.toml").write_text(f'[ui]\ntheme = "{theme}"\n')
    app = make_app(ui_server())
    assert app.settings.ui.theme == theme
    assert shot(snap_compare, app)
