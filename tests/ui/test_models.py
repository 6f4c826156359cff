"""Models pane and model switcher, keyboard only, against a real server and the fake hub:
download (and pause, resume, cancel), swap between cached models, a corrupt model's failed
load with its rollback, remove with confirmation."""

from __future__ import annotations

import numpy as np
from gguf import GGUFWriter
from textual.widgets import DataTable
from tiny_gguf import write_truncated_gguf

from abi_tui.app import AbiApp
from abi_tui.dialogs.confirm import ConfirmDialog
from abi_tui.dialogs.hub_search import HubSearch
from abi_tui.dialogs.switcher import ModelSwitcher
from abi_tui.panes.models import ModelsPane
from abi_tui.widgets.download_row import DownloadRow
from abi_tui.widgets.header import StatusHeader

from .conftest import HUB_REPO, SIZE, cache_model, wait_for


def header_text(app: AbiApp) -> str:
    return app.query_one(StatusHeader).render_status(app.link).plain


def served(app: AbiApp) -> str | None:
    return app.link.health.model if app.link.health else None


def table_names(app: AbiApp) -> list[str]:
    table = app.pane("models").query_one("#models-table", DataTable)
    return [str(table.get_row_at(i)[0]) for i in range(table.row_count)]


def messages(app: AbiApp) -> str:
    return "\n".join(f"{n.title}: {n.message}" for n in app._notifications)


def write_unknown_architecture(path):
    """A well-formed GGUF that passes validation and that llama.cpp refuses to load."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(path), "no-such-arch")
    writer.add_name("broken")
    writer.add_tensor("token_embd.weight", np.zeros((8, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


async def arrow_to(pilot, table: DataTable, row: int) -> None:
    """Move a table's cursor with the arrow keys only, as a user would."""
    await pilot.pause()
    step = "down" if row > table.cursor_row else "up"
    await pilot.press(*[step] * abs(row - table.cursor_row))
    assert table.cursor_row == row


async def ready(pilot, app: AbiApp) -> None:
    """Connected, on the Models pane (alt+m: the first pane may have a text box focused)."""
    await wait_for(pilot, lambda: app.link.connected and served(app) is not None, what="the server")
    await pilot.press("alt+m")
    await wait_for(pilot, lambda: len(table_names(app)) >= 2, what="the cached models")


async def test_download_a_model_from_the_hub(ui_server, make_app, hub):
    app = make_app(ui_server())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("2", "d")
        assert isinstance(app.screen, HubSearch)
        await pilot.press(*f"{HUB_REPO}:Q8_0", "enter")
        pane = app.pane("models")
        await wait_for(pilot, lambda: any(r.progress.state == "done" for r in pane.query(DownloadRow)),
                       timeout=30, what="the download to finish")
        await wait_for(pilot, lambda: any(n.startswith("pico") for n in table_names(app)), what="pico in the table")
        assert "Download complete" in messages(app)
        row = pane.query_one(DownloadRow)
        assert row.progress.downloaded == row.progress.total == len(hub.repos[HUB_REPO].files["pico-Q8_0.gguf"])


async def test_search_the_hub_and_choose_a_quant(ui_server, make_app, hub):
    app = make_app(ui_server())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("2", "d", *"pico", "enter")
        results = app.screen.query_one("#hub-results", DataTable)
        await wait_for(pilot, lambda: results.row_count == 2, what="two quants found")
        assert app.focused is results
        quants = [str(results.get_row_at(i)[1]) for i in range(results.row_count)]
        assert sorted(quants) == ["Q4_K_M", "Q8_0"]
        await arrow_to(pilot, results, quants.index("Q8_0"))
        await pilot.press("enter")
        pane = app.pane("models")
        await wait_for(pilot, lambda: "pico-Q8_0" in table_names(app), timeout=30, what="pico-Q8_0 cached")
        assert pane.query_one(DownloadRow).progress.state == "done"
        assert not any("Q4_K_M" in n for n in table_names(app))


async def test_pause_resume_and_cancel_a_download(ui_server, make_app, hub):
    hub.throttle_bps, hub.piece = 30_000, 4096  # ~8 s for the file: time to press keys while it runs
    app = make_app(ui_server())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("2", "d", *f"{HUB_REPO}:Q4_K_M", "enter")
        pane = app.pane("models")
        await wait_for(pilot, lambda: pane.query(DownloadRow) and pane.query_one(DownloadRow).progress.state == "downloading"
                       and pane.query_one(DownloadRow).progress.downloaded > 0, what="downloading")
        row = pane.query_one(DownloadRow)
        assert app.focused is row
        await pilot.press("p")
        await wait_for(pilot, lambda: row.progress.state == "paused", what="paused")
        paused_at = row.progress.downloaded
        await pilot.press("r")
        await wait_for(pilot, lambda: row.progress.downloaded > paused_at, what="resumed")
        assert row.progress.state == "downloading"
        await pilot.press("c")
        await wait_for(pilot, lambda: row.progress.state == "cancelled", what="cancelled")
        assert not any(n.startswith("pico") for n in table_names(app))


async def test_swap_between_two_cached_models(ui_server, make_app):
    app = make_app(ui_server())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        assert "model tiny" in header_text(app)
        await pilot.press("m")
        assert isinstance(app.screen, ModelSwitcher)
        await wait_for(pilot, lambda: app.screen.models, what="the switcher's list")
        await pilot.press(*"tiny-b", "enter")
        await wait_for(pilot, lambda: served(app) == "tiny-b", what="tiny-b served")
        assert "model tiny-b" in header_text(app)
        await wait_for(pilot, lambda: "Model swapped" in messages(app), what="the outcome")
        # And back, from the Models pane: highlight tiny, press l.
        await pilot.press("2")
        table = app.pane("models").query_one("#models-table", DataTable)
        await arrow_to(pilot, table, table_names(app).index("tiny"))
        await pilot.press("l")
        await wait_for(pilot, lambda: served(app) == "tiny", what="tiny served again")
        assert "model tiny " in header_text(app) + " "


async def test_corrupt_model_is_refused_or_rolled_back(ui_server, make_app, abi_home, cached):
    write_unknown_architecture(abi_home / "models" / "test" / "broken" / "broken.gguf")
    truncated = write_truncated_gguf(cached["tiny-b"], abi_home / "trunc.gguf")
    cache_model(abi_home, truncated, "truncated")
    app = make_app(ui_server())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("m")
        await wait_for(pilot, lambda: app.screen.models, what="the switcher's list")
        await pilot.press(*"broken", "enter")
        await wait_for(pilot, lambda: "Could not swap to broken" in messages(app), timeout=20, what="the failure")
        assert "rolled back to tiny" in messages(app)
        assert "rolled back" in header_text(app)
        assert served(app) == "tiny" and app.link.health.state == "ready"
        # A truncated file never reaches the loader: validation refuses it, tiny keeps serving.
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelSwitcher) and app.screen.models, what="switcher")
        await pilot.press(*"truncated", "enter")
        await wait_for(pilot, lambda: "Could not swap to truncated" in messages(app), what="the refusal")
        assert "truncated" in messages(app).split("Could not swap to truncated", 1)[1]
        assert served(app) == "tiny"


async def test_remove_a_model_after_confirming(ui_server, make_app, cached):
    app = make_app(ui_server())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("2")
        table = app.pane("models").query_one("#models-table", DataTable)
        await arrow_to(pilot, table, table_names(app).index("tiny-b"))
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")  # changing one's mind removes nothing
        assert not isinstance(app.screen, ConfirmDialog) and cached["tiny-b"].exists()
        await pilot.press("x", "y")
        await wait_for(pilot, lambda: "tiny-b" not in table_names(app), what="tiny-b gone")
        assert not cached["tiny-b"].exists()
        assert "Model removed" in messages(app)
        # The model being served is not removed: the server says why.
        await arrow_to(pilot, table, table_names(app).index("tiny"))
        await pilot.press("x", "y")
        await wait_for(pilot, lambda: "Could not remove tiny" in messages(app), what="the refusal")
        assert cached["tiny"].exists() and "tiny" in table_names(app)
        assert isinstance(app.pane("models"), ModelsPane)


async def test_refreshes_in_a_burst_never_cancel_a_listing(ui_server, make_app, cached):
    """Refreshes asked for while a listing is in flight (a burst of events, a pane shown, ctrl+r)
    wait for it and list once more: a cancelled listing costs the server the same work and shows
    in its Requests log as a client that hung up (499)."""
    app = make_app(ui_server())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        pane = app.pane("models")
        await wait_for(pilot, lambda: not pane._listing, what="the first listing")
        before = await app.client.metrics()
        for _ in range(5):  # in one turn of the loop, as a burst of events arrives
            pane.refresh_models()
        await wait_for(pilot, lambda: not pane._listing, what="the burst's listings")
        after = await app.client.metrics()

        def listings(samples, status):
            return sum(v for labels, v in samples.get("abi_requests_total", [])
                       if labels.get("route") == "/api/models" and labels.get("status") == status)

        assert listings(after, "499") == listings(before, "499") == 0
        assert 1 <= listings(after, "200") - listings(before, "200") <= 2  # the first, then one for the rest
        assert "tiny" in table_names(app)
