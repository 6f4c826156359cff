"""Bench pane: snapshots of the form, a run in progress, a finished run and a comparison, on
deterministic data (LiveSamples built here, two saved runs under tests/ui/data/bench made by
make_bench_runs.py); and real runs from the form against the test server's mock models: one to
the end (summary, saved, listed), one cancelled with Esc.

Update the snapshots after an intended change with `pytest tests/ui/test_bench.py
--snapshot-update`, and look at them."""

from __future__ import annotations

import io
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from textual.content import Content
from textual.widgets import DataTable, Input, Select, Static

from abi_tui.app import AbiApp
from abi_tui.bench import LiveSample, load_run
from abi_tui.panes.bench import BenchPane
from abi_tui.widgets.bench_live import LiveRun, TimeBins

from .conftest import SIZE, wait_for

DATA = Path(__file__).parent / "data" / "bench"
RUN_A = "20250502-140312-quick-a1b2"
RUN_B = "20250503-091500-quick-c3d4"


def recorded_samples() -> list[LiveSample]:
    """What the quick preset sends while it runs, with fixed times and values: warm-up and the
    measured phase of constant_rate, then variable_rate 23 requests into its measured phase."""
    rng = random.Random(7)
    samples: list[LiveSample] = []
    t = 0.0
    for scenario, spread, requests in (("constant_rate", 0.0, 50), ("variable_rate", 2.0, 23)):
        samples.append(LiveSample("phase", t, scenario, "warmup", planned=5))
        for k in range(5):
            t += 0.06
            samples.append(LiveSample("request", round(t, 4), scenario, "warmup", done=k + 1, planned=5,
                                      ttft_ms=9.0, e2e_ms=360.0, tokens=64, tokens_per_s=170.0))
        samples.append(LiveSample("phase", t, scenario, "measure", planned=50))
        start, tokens = t, 0
        for k in range(requests):
            t += 0.06
            tokens += 64
            itl = [(round(t - 0.35 + i * 0.0055, 4), round(5.5 + rng.uniform(-spread, spread) + rng.uniform(-0.3, 0.3), 3))
                   for i in range(63)]
            samples.append(LiveSample("request", round(t, 4), scenario, "measure", done=k + 1, planned=50,
                                      ttft_ms=round(8 + rng.gauss(0, 1.2), 3), e2e_ms=355.0, tokens=64, itl=itl,
                                      tokens_per_s=round(tokens / (t - start), 2)))
    return samples


@pytest.fixture
def saved_runs(abi_home: Path) -> dict[str, Path]:
    """The two recorded runs in $ABI_HOME/bench, where `abi bench` would have saved them."""
    bench = abi_home / "bench"
    bench.mkdir(exist_ok=True)
    return {run: Path(shutil.copy(DATA / f"{run}.json", bench / f"{run}.json")) for run in (RUN_A, RUN_B)}


@pytest.fixture
def dash(ui_server, make_app) -> AbiApp:
    return make_app(ui_server())


def bench(app: AbiApp) -> BenchPane:
    pane = app.pane("bench")
    assert isinstance(pane, BenchPane)
    return pane


def run_ids(pane: BenchPane) -> list[str]:
    table = pane.query_one("#bench-runs-table", DataTable)
    return [str(table.get_row_at(i)[1]) for i in range(table.row_count)]


async def open_bench(pilot: Any, runs: int = 2) -> BenchPane:
    app: AbiApp = pilot.app
    await wait_for(pilot, lambda: app.link.connected and app.link.health is not None, what="connection")
    # Not the "4" key: the first pane (Chat) has its composer focused, where a 4 is typed.
    app.show_pane("bench")
    await wait_for(pilot, lambda: app.active_pane == "bench" and app.pane("bench").is_mounted, what="the bench pane")
    pane = bench(app)
    await wait_for(pilot, lambda: len(run_ids(pane)) == runs, what=f"{runs} runs listed")
    return pane


def shot(snap_compare, app: AbiApp, before: Any) -> bool:
    async def run_before(pilot: Any) -> None:
        await before(pilot)
        pilot.app.clear_notifications()
        await pilot.pause(0.3)

    return snap_compare(app, terminal_size=SIZE, run_before=run_before)


# -- snapshots --------------------------------------------------------------------------------
def test_bench_form(snap_compare, dash, saved_runs):
    async def shown(pilot: Any) -> None:
        await open_bench(pilot)

    assert shot(snap_compare, dash, shown)


def test_bench_run_in_progress(snap_compare, dash, saved_runs):
    async def running(pilot: Any) -> None:
        pane = await open_bench(pilot)
        pane.begin_live("quick · constant_rate, variable_rate · closed loop, concurrency 4", scenarios=2)
        await pilot.pause(0.2)
        pane.feed(recorded_samples())
        assert pane.live is not None and pane.live.done == 23 and pane.live.scenario == "variable_rate"

    assert shot(snap_compare, dash, running)


def test_bench_finished_run(snap_compare, dash, saved_runs):
    async def finished(pilot: Any) -> None:
        pane = await open_bench(pilot)
        pane.begin_live("quick · constant_rate, variable_rate · closed loop, concurrency 4", scenarios=2)
        pane.feed(recorded_samples())
        pane.run_finished(load_run(saved_runs[RUN_A]), None, False)
        await wait_for(pilot, lambda: pane.view == "summary" and pane.selected_run() == str(saved_runs[RUN_A]),
                       what="the summary, and the run selected in the list")

    assert shot(snap_compare, dash, finished)


def test_bench_comparison(snap_compare, dash, saved_runs):
    async def compared(pilot: Any) -> None:
        pane = await open_bench(pilot)
        # The list is newest first: mark the older run A, the newer B.
        await pilot.press("r", "down", "space", "up", "space", "c")
        await wait_for(pilot, lambda: pane.comparison is not None and pane.view == "compare", what="the comparison")
        assert pane.marks == [str(saved_runs[RUN_A]), str(saved_runs[RUN_B])]

    assert shot(snap_compare, dash, compared)


# -- real runs from the form ------------------------------------------------------------------
async def choose(pilot: Any, select: Select, *keys: str) -> None:
    """Pick an option with the keyboard: open the list, type the option's start (or move down), Enter."""
    select.focus()
    await pilot.press("enter", *keys, "enter")


async def type_into(pilot: Any, field: Input, text: str) -> None:
    field.focus()
    await pilot.press(*text)


async def fill_form(pilot: Any, pane: BenchPane, requests: str, duration: str = "") -> None:
    await choose(pilot, pane.query_one("#bench-preset", Select), "n")
    await choose(pilot, pane.query_one("#bench-workload", Select), "down")  # the first pattern: constant
    await type_into(pilot, pane.query_one("#bench-load-value", Input), "2")
    await type_into(pilot, pane.query_one("#bench-requests", Input), requests)
    if duration:
        await type_into(pilot, pane.query_one("#bench-duration", Input), duration)
    await type_into(pilot, pane.query_one("#bench-max-tokens", Input), "8")
    assert (pane.value("bench-preset"), pane.value("bench-workload")) == ("none", "pattern:constant")


def text_of(pane: BenchPane, selector: str) -> str:
    content = pane.query_one(selector, Static).content
    if isinstance(content, (str, Content)):
        return str(content)
    console = Console(width=100, record=True, file=io.StringIO())
    console.print(content)
    return console.export_text()


async def test_run_a_benchmark_from_the_form(ui_server, make_app, saved_runs, abi_home):
    app = make_app(ui_server())
    async with app.run_test(size=SIZE) as pilot:
        pane = await open_bench(pilot)
        await fill_form(pilot, pane, requests="6")
        await type_into(pilot, pane.query_one("#bench-slo", Input), "ttft=bad")
        await pilot.press("enter")
        assert not pane.running and any("bad SLO" in n.message for n in app._notifications)
        pane.query_one("#bench-slo", Input).value = "ttft=5s,itl=2s"  # bounds a busy machine still meets

        await pilot.press("ctrl+r")
        assert pane.live is not None, "the run started (and may have ended already: it is short)"
        await wait_for(pilot, lambda: not pane.running, timeout=40, what="the run to end")
        assert pane.result is not None, text_of(pane, "#bench-status")
        run_id = pane.result.run_id
        await wait_for(pilot, lambda: run_id in run_ids(pane), what="the new run in the list")

        # The live view got the measured phase, and the run is saved where `abi bench` saves.
        assert pane.live is not None and pane.live.done == 6 and len(pane.live.ttft_ms) == 6
        assert pane.live.itl.count == 6 * 7
        assert (abi_home / "bench" / f"{run_id}.json").is_file()
        assert run_ids(pane)[0] == run_id and len(run_ids(pane)) == 3
        assert pane.selected_run() == str(abi_home / "bench" / f"{run_id}.json")
        summary = pane.result.scenarios[0].summary
        assert summary["requests"] == {"total": 6, "completed": 6, "errors": 0, "error_kinds": {}}
        assert summary["goodput"]["slo"] == {"ttft_ms": 5000.0, "itl_ms": 2000.0}
        assert pane.result.target["url"] == app.link.url

        assert pane.view == "summary"
        shown = text_of(pane, "#bench-summary-body")
        for expected in (run_id, "mock/constant_rate", "TTFT", "ITL", "TPOT", "E2E", "server TTFT", "ITL overhead",
                         "goodput", "ttft≤5000 ms", "Definitions", "Time to first token"):
            assert expected in shown
        assert "Done" in text_of(pane, "#bench-status")
        assert any(run_id in n.message for n in app._notifications)


async def test_cancel_a_running_benchmark(ui_server, make_app, saved_runs, abi_home):
    """Against "another URL" (the same test server, named by its address): Esc stops the run."""
    server = ui_server()
    app = make_app(server)
    async with app.run_test(size=SIZE) as pilot:
        pane = await open_bench(pilot)
        await choose(pilot, pane.query_one("#bench-target", Select), "a")
        pane.query_one("#bench-url", Input).value = server.url  # typed, 22 keys cost seconds of pilot round trips
        await fill_form(pilot, pane, requests="100000", duration="60")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: pane.live is not None and pane.live.phase == "measure" and pane.live.done >= 3,
                       timeout=20, what="measured requests")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not pane.running, timeout=15, what="the run to stop")
        assert "Cancelled" in text_of(pane, "#bench-status")
        assert sorted(p.stem for p in (abi_home / "bench").glob("*.json")) == [RUN_A, RUN_B], "nothing saved"
        assert pane.live is not None and pane.live.done >= 3
        await pilot.press("escape")  # idle: Esc is not the pane's any more
        assert not pane.running


async def test_palette_and_help_hold_the_bench_actions(ui_server, make_app, saved_runs):
    app = make_app(ui_server())
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.link.connected, what="connection")
        titles = [command.title for command in app.get_system_commands(app.screen)]
        for title in ("Bench: run", "Bench: cancel the run", "Bench: live charts", "Bench: summary",
                      "Bench: earlier runs", "Bench: compare two runs", "Bench: reload the list of runs"):
            assert title in titles
        ids = {binding.id for where, binding in app.binding_catalogue() if where == "Bench pane"}
        assert {"bench-run", "bench-cancel", "bench-mark", "bench-compare", "bench-live", "bench-summary",
                "bench-runs", "bench-refresh"} <= ids
        await pilot.press("ctrl+p", *"bench: earlier runs", "enter")
        await wait_for(pilot, lambda: app.active_pane == "bench" and bench(app).view == "runs", what="the runs")
        await wait_for(pilot, lambda: len(run_ids(bench(app))) == 2, what="the saved runs")


# -- the live data ----------------------------------------------------------------------------
def test_time_bins_stay_bounded_and_keep_mean_and_max():
    bins = TimeBins(width_s=0.01, max_bins=50)
    for i in range(10_000):
        bins.add(i * 0.001, 5.0 if i != 4321 else 90.0)
    xs, means, peaks = bins.series()
    assert len(xs) <= 50 and bins.count == 10_000
    assert max(peaks) == 90.0 and all(p == 5.0 for x, p in zip(xs, peaks, strict=True) if abs(x - 4.321) > bins.width_s)
    assert sum(means) / len(means) == pytest.approx(5.0, abs=0.1)


def test_live_run_charts_only_the_measured_phase():
    live = LiveRun()
    for sample in recorded_samples():
        live.add(sample)
    assert live.scenarios_seen == ["constant_rate", "variable_rate"]
    assert len(live.ttft_ms) == 50 + 23 and live.itl.count == (50 + 23) * 63
    assert list(live.rates) == ["constant_rate", "variable_rate"]
    assert (live.scenario, live.phase, live.done, live.planned) == ("variable_rate", "measure", 23, 50)
