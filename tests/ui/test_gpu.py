"""GPU pane (issue 7): against a real server whose NVML is the fake one
(tests/telemetry/fake_pynvml.py) or the real module (no GPU on the test machine), and against
`abi dash --serve` in another process (`abi dash --connect`, issue 9).

Snapshots stop the server's sampler thread and take each sample by hand (`sample_once`), with
the fake NVML moved along by `advance()`, a fixed host reading and fixed process names: the
pane then draws the same picture on every run. The pane reads them the way it always does,
GET /api/telemetry?history=300 when shown.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Static

from abi_tui.app import DEFAULT_PANE, AbiApp
from abi_tui.panes.gpu import GpuPane
from abi_tui.server.state import STATE
from abi_tui.telemetry import HostRecord, NvmlReader, ProcessRecord
from abi_tui.widgets.gpu_card import GpuCard
from tests.telemetry.fake_pynvml import GIB, FakeNvml, two_gpus

from .conftest import SIZE, UiServer, wait_for

SERVER_PID = 4242  # the server's pid in snapshots (the real one changes every run)
NAMES = {SERVER_PID: "python3", 31337: "train.py", 2001: "Xorg"}
GPU_MEMORY = 2 * GIB  # what NVML reports the server's process to hold on GPU 0


class FixedHost:
    """A host reader with a fixed, gently moving CPU pattern and fixed memory."""

    def __init__(self) -> None:
        self.ticks = 0

    def read(self) -> HostRecord:
        self.ticks += 1
        cores = [float(20 + (self.ticks * 13) % 50), float(10 + (self.ticks * 7) % 30)]
        return HostRecord(cpu_count=2, cpu_percent=sum(cores) / 2, cpu_per_core=cores, load_avg=[1.25, 0.9, 0.7],
                          memory_total_bytes=32 * 10**9, memory_used_bytes=(12 + self.ticks % 3) * 10**9,
                          memory_available_bytes=18 * 10**9, memory_percent=40.0,
                          process=ProcessRecord(pid=SERVER_PID, name="python3", rss_bytes=(900 + self.ticks) * 10**6,
                                                cpu_percent=35.0, num_threads=12))


class GpuServer:
    """The embedded server with `nvml` as its NVML module; `sampler` is its telemetry sampler."""

    def __init__(self, ui: UiServer, running: Any, nvml: FakeNvml | None) -> None:
        self.ui = ui
        self.url = ui.url
        self.state = running.app[STATE]
        self.sampler = self.state.services["telemetry"].sampler
        self.nvml = nvml

    def by_hand(self) -> GpuServer:
        """Stop the sampler thread; samples come from `take()` with fixed host data and names."""
        self.sampler.stop()
        self.sampler.samples.clear()
        engine = self.state.engine
        self.sampler.nvml_reader = NvmlReader(self.nvml, own_pid=SERVER_PID, process_name=NAMES.get,
                                              model_names=lambda: list(engine.pool.resident))
        self.sampler.host_reader = FixedHost()
        return self

    def take(self, count: int) -> None:
        for _ in range(count):
            if self.nvml is not None:
                self.nvml.advance()
            self.sampler.sample_once()

    def reload(self, model: str) -> dict[str, Any]:
        request = urllib.request.Request(self.url + "/admin/reload", data=json.dumps({"model": model}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


@pytest.fixture
def gpu_server(cached: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    """`gpu_server(nvml, **settings)`: the embedded server serving `tiny`, NVML injected the way
    tests inject it (`start_server(..., services={"nvml_module": ...})`); None = the real pynvml."""
    from abi_tui.server import main

    original = main.start_server
    started: list[UiServer] = []

    def start(nvml: FakeNvml | None, **settings: Any) -> GpuServer:
        running: list[Any] = []

        async def start_server(config: Any, **kwargs: Any) -> Any:
            kwargs.pop("services", None)  # EmbeddedServer passes its own (None here)
            services = {"nvml_module": nvml} if nvml is not None else None
            server = await original(config, services=services, **kwargs)
            running.append(server)
            return server

        monkeypatch.setattr(main, "start_server", start_server)
        ui = UiServer({"server.model": str(cached["tiny"]), **settings}).start()
        started.append(ui)
        return GpuServer(ui, running[0], nvml)

    yield start
    for server in started:
        server.stop()


def gpu_pane(app: AbiApp) -> GpuPane:
    pane = app.pane("gpu")
    assert isinstance(pane, GpuPane)
    return pane


def notice(app: AbiApp) -> str:
    widget = gpu_pane(app).query_one("#gpu-notice", Static)
    return str(widget.render()) if widget.display else ""


def process_rows(app: AbiApp) -> list[list[str]]:
    table = gpu_pane(app).query_one("#gpu-procs", DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def card_text(app: AbiApp, index: int) -> str:
    card = gpu_pane(app).query_one(f"#gpu-card-{index}", GpuCard)
    return str(card.render())


async def show_gpu_pane(pilot: Any, samples: int = 1) -> GpuPane:
    app: AbiApp = pilot.app
    await wait_for(pilot, lambda: app.link.connected and app.link.health is not None, what="the connection")
    # The first pane's start-up (tab activation, focus into its input) must be over: a late
    # focus there would switch the tabs back to it.
    await wait_for(pilot, lambda: app.active_pane == DEFAULT_PANE and app.focused is not None, what="the first pane")
    await pilot.pause(0.1)
    app.show_pane("gpu")  # as the pane key does (the Chat pane's input would take a "3")
    await wait_for(pilot, lambda: app.active_pane == "gpu" and app.pane("gpu").is_mounted, what="the GPU pane")
    pane = gpu_pane(app)
    await wait_for(pilot, lambda: len(pane.samples) >= samples and not pane.need_history, what=f"{samples} samples")
    await pilot.pause(0.1)
    assert app.active_pane == "gpu", "something switched the tabs away from the GPU pane"
    return pane


def status_text(app: AbiApp) -> str:
    return str(gpu_pane(app).query_one("#gpu-status", Static).render())


def real_nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


def under_load(nvml: FakeNvml, tick: int) -> None:
    """GPU 0 busy: 85-99 % utilization, 18-20 GiB used, warm, near its power limit."""
    nvml.set_load(0, utilization=85 + (tick * 7) % 15, memory_utilization=60 + tick % 9,
                  memory_used=(18 + tick % 3) * GIB, temperature=74 + tick % 6, power_w=380 + (tick * 11) % 60,
                  clocks_mhz={0: 2700, 1: 2700})


# --------------------------------------------------------------------------------- behaviour
async def test_two_gpus_with_na_where_unsupported(gpu_server, make_app):
    server = gpu_server(two_gpus(own_pid=SERVER_PID, own_memory=GPU_MEMORY)).by_hand()
    server.take(5)
    app = make_app(server)
    async with app.run_test(size=SIZE) as pilot:
        pane = await show_gpu_pane(pilot, 5)
        assert sorted(pane.cards) == [0, 1] and not notice(app)
        desktop, laptop = card_text(app, 0), card_text(app, 1)
        assert "fan 48%" in desktop and "/450 W" in desktop and "mem 10501/10501 MHz" in desktop
        # The laptop card has no fan and no power readings: N/A, never 0.
        assert "fan N/A" in laptop and "power N/A" in laptop and "temp " in laptop
        assert "0.1/2.1 GB" in laptop
        util = pane.charts["util"]
        assert [s.label for s in util.series] == ["GPU 0", "GPU 1"] and len(util.series[0].values) == 5
        power = pane.charts["power"]
        assert [s.label for s in power.series] == ["GPU 0"]
        assert "GPU 1 N/A" in power.legend_markup()
        rows = process_rows(app)
        own = next(r for r in rows if r[1] == str(SERVER_PID))
        assert own[0] == "0" and own[3] == "abi (python3)" and own[5] == "● tiny" and own[4] == "2.1 GB"
        assert {r[1] for r in rows} == {str(SERVER_PID), "31337", "2001"}
        assert "2 GPUs · driver 550.54.15" in status_text(app)


async def test_a_driver_error_mid_run_shows_the_reason_and_recovers(gpu_server, make_app):
    nvml = two_gpus(own_pid=os.getpid())
    server = gpu_server(nvml, **{"telemetry.interval_s": 0.25})
    app = make_app(server)
    async with app.run_test(size=SIZE) as pilot:
        pane = await show_gpu_pane(pilot)
        await wait_for(pilot, lambda: len(pane.cards) == 2, what="two cards")
        nvml.fail(nvml.NVML_ERROR_GPU_IS_LOST)
        await wait_for(pilot, lambda: "GPU is lost" in notice(app), what="the error state")
        assert "Retrying NVML" in notice(app) and "GPU telemetry error" == pane.query_one("#gpu-notice").border_title
        assert not pane.cards and app.is_running
        in_error = len(pane.samples)
        await wait_for(pilot, lambda: len(pane.samples) > in_error + 1, what="samples while in error")
        # The host part stays live meanwhile.
        assert pane.samples[-1]["gpu"]["state"] == "error" and pane.charts["ram"].series[0].values[-1]
        nvml.recover()
        await wait_for(pilot, lambda: not notice(app) and len(pane.cards) == 2, timeout=20, what="recovery")
        # The history keeps a gap where NVML could not be read.
        assert None in pane.charts["util"].series[0].values


@pytest.mark.skipif(real_nvml_works(), reason="this machine has a working NVIDIA driver")
async def test_real_nvml_without_a_gpu_names_the_reason(gpu_server, make_app):
    server = gpu_server(None, **{"telemetry.interval_s": 0.25})
    app = make_app(server)
    async with app.run_test(size=SIZE) as pilot:
        pane = await show_gpu_pane(pilot)
        reason = pane.samples[-1]["gpu"]["reason"]
        assert reason and pane.samples[-1]["gpu"]["state"] == "no_driver"
        await wait_for(pilot, lambda: "No NVIDIA GPU / driver: " + reason in notice(app), what="the reason")
        assert pane.has_class("-no-gpu") and not pane.cards
        # The host charts stay live: CPU readings arrive from the second sample on.
        cpu = pane.charts["cpu"]
        await wait_for(pilot, lambda: cpu.series and any(v is not None for v in cpu.series[0].values), what="CPU data")
        assert pane.charts["ram"].series[0].values[-1]


async def test_connect_shows_the_remote_servers_telemetry(serve, cached, make_app):
    """`abi dash --connect URL` to `abi dash --serve` in another process (issue 9)."""
    from abi_tui.client import Backoff
    from abi_tui.config import load_settings

    remote = serve("--model", str(cached["tiny"]), "--n-ctx", "512", "--threads", "1", env={"ABI_THREADS": "1"})
    pid = remote.process.pid
    assert pid != os.getpid()
    app = AbiApp(load_settings(), url=remote.url, frozen=True, backoff=Backoff(initial=0.1, maximum=0.3, jitter=0.0))
    async with app.run_test(size=SIZE) as pilot:
        pane = await show_gpu_pane(pilot)
        assert app.embedded is None and not app.link.embedded
        # The remote sampler runs at 1 Hz from its start: its latest sample may predate the model's load.
        await wait_for(pilot, lambda: [r[5] for r in process_rows(app) if r[1] == str(pid)] == ["● tiny"],
                       what="the remote process with its model")
        row = next(r for r in process_rows(app) if r[1] == str(pid))
        assert row[3].startswith("abi (")
        assert pane.samples[-1]["host"]["process"]["pid"] == pid
        assert f"server pid {pid}" in pane.charts["ram"].legend_markup()
        assert "tiny" in pane.charts["pool"].legend_markup()
        cpu = pane.charts["cpu"]
        await wait_for(pilot, lambda: any(v is not None for v in cpu.series[0].values), what="remote CPU data")
        gpu = pane.samples[-1]["gpu"]
        if gpu["state"] in ("no_gpu", "no_driver"):
            assert "No NVIDIA GPU / driver: " + gpu["reason"] in notice(app)


async def test_range_pause_and_nothing_drawn_while_hidden(gpu_server, make_app):
    server = gpu_server(two_gpus(own_pid=SERVER_PID, own_memory=GPU_MEMORY)).by_hand()
    server.take(70)
    app = make_app(server)
    async with app.run_test(size=SIZE) as pilot:
        pane = await show_gpu_pane(pilot, 70)
        util = pane.charts["util"]
        assert util.span == 60 and len(util.series[0].values) == 60
        await pilot.press("r")
        assert util.span == 300 and len(util.series[0].values) == 70 and "last 5 min" in status_text(app)
        await pilot.press("p")
        assert "paused" in status_text(app)
        server.take(3)
        await wait_for(pilot, lambda: len(pane.samples) == 73, what="three more samples")
        assert len(util.series[0].values) == 70, "a paused view stays as it was"
        await pilot.press("p")
        assert len(util.series[0].values) == 73 and "live" in status_text(app)
        # Hidden: samples are kept, nothing is computed or drawn.
        app.show_pane("server")
        await wait_for(pilot, lambda: app.active_pane == "server", what="the Server pane")
        await pilot.pause(0.2)
        renders, redraws = util.renders, pane.redraws
        server.take(3)
        await wait_for(pilot, lambda: len(pane.samples) == 76, what="samples while hidden")
        await pilot.pause(0.2)
        assert (util.renders, pane.redraws) == (renders, redraws)
        app.show_pane("gpu")
        await wait_for(pilot, lambda: util.renders > renders, what="a redraw when shown")
        assert len(util.series[0].values) == 76


# --------------------------------------------------------------------------------- snapshots
def shot(snap_compare, app: AbiApp, samples: int) -> bool:
    async def shown(pilot: Any) -> None:
        await show_gpu_pane(pilot, samples)
        await pilot.pause(0.3)

    return snap_compare(app, terminal_size=SIZE, run_before=shown)


def test_snapshot_two_gpus_with_history(snap_compare, gpu_server, make_app):
    server = gpu_server(two_gpus(own_pid=SERVER_PID, own_memory=GPU_MEMORY)).by_hand()
    server.take(45)
    assert shot(snap_compare, make_app(server), 45)


def test_snapshot_one_gpu_under_load_after_a_model_swap(snap_compare, gpu_server, make_app):
    """One model resident at a time: each swap evicts one model and loads the other."""
    nvml = FakeNvml(two_gpus(own_pid=SERVER_PID, own_memory=GPU_MEMORY).gpus[:1])
    server = gpu_server(nvml, **{"server.max_loaded_models": 1}).by_hand()
    tick = 0
    for swap_to, samples in ((None, 15), ("tiny-b", 15), ("tiny", 10)):
        if swap_to:
            assert server.reload(swap_to)["model"] == swap_to
        for _ in range(samples):
            under_load(nvml, tick)
            server.sampler.sample_once()
            tick += 1
    assert shot(snap_compare, make_app(server), 40)


def test_snapshot_no_gpu(snap_compare, gpu_server, make_app):
    """The state this machine is in: no NVML library (the real module says the same)."""
    server = gpu_server(FakeNvml(library_present=False)).by_hand()
    server.take(30)
    assert shot(snap_compare, make_app(server), 30)
