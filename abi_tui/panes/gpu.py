"""GPU pane: a card per GPU, history charts of utilization, memory, temperature
and power, the process table (the server's own process labelled with its models), the model
pool over time (bytes by model and kind, loads and evictions marked) and host CPU/RAM.

Everything comes from the server through the client: the history from GET /api/telemetry when
the pane is first shown (and after every reconnect), then one `telemetry.sample` event per
sampler tick on /api/events. So `abi dash --connect URL` shows the remote machine.

While the pane is hidden a sample costs an append to a deque; the charts (plotext, imported
on the first show) redraw only while the pane is on screen. Without an NVIDIA GPU or driver
the pane says so with the server's reason, and the host and pool charts stay live; a driver
error mid-run shows the driver's reason and that NVML is retried, then the cards come back.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.content import Content
from textual.css.query import NoMatches
from textual.events import Resize
from textual.widgets import DataTable, Static

from abi_tui.client import CONNECTION_OPEN, ClientError, ServerEvent
from abi_tui.connection import LinkStatus
from abi_tui.formatting import human_bytes
from abi_tui.panes.base import Pane

if TYPE_CHECKING:
    from abi_tui.telemetry.schema import GpuRecord, GpuStatus, HostRecord
    from abi_tui.widgets.charts import HistoryChart, LegendEntry, Series
    from abi_tui.widgets.gpu_card import GpuCard

Sample = dict[str, Any]

HISTORY = 300  # the server keeps 300 samples; so does the pane
RANGES_S = (60, 300)  # chart spans the range key cycles through
GPU_COLORS = ("primary", "warning", "success", "accent", "secondary", "error")
MODEL_COLORS = ("primary", "accent", "success", "warning", "secondary")
# Kinds of pool memory, stacked in this order; one model's kinds are shades of its colour.
POOL_KINDS = (("weights", 0.0), ("kv_cache", 0.35), ("compute", 0.6))
POOL_MARKS = {"load": ("+", "success"), "evicted": ("-", "error"), "unloaded": ("-", "warning"),
              "expired": ("-", "warning")}
CARD_MIN_WIDTH = 50
PROCESS_COLUMNS = ("GPU", "PID", "Type", "Process", "Memory", "Models")
PREWARM_AFTER_S = 3.0  # seconds after start-up before plotext is imported in the background


def import_charts() -> None:
    import abi_tui.widgets.charts  # noqa: F401  (plotext)
    import abi_tui.widgets.gpu_card  # noqa: F401  (the telemetry schema)


# --------------------------------------------------------------------------------- series
def gpu_values(window: list[Sample], index: int, pick: Callable[[dict[str, Any]], Any]) -> list[float | None]:
    """One GPU's reading per sample; None where the sample has no such GPU or no value (N/A)."""
    values: list[float | None] = []
    for sample in window:
        value = None
        for gpu in (sample.get("gpu") or {}).get("gpus") or []:
            if gpu.get("index") == index:
                with suppress(TypeError, ZeroDivisionError):
                    value = pick(gpu)
                break
        values.append(None if value is None else float(value))
    return values


def gpu_indices(window: list[Sample]) -> list[int]:
    found = {gpu.get("index") for s in window for gpu in (s.get("gpu") or {}).get("gpus") or []}
    return sorted(i for i in found if isinstance(i, int))


def memory_percent(gpu: dict[str, Any]) -> float | None:
    used, total = gpu.get("memory_used_bytes"), gpu.get("memory_total_bytes")
    return None if used is None or not total else used / total * 100


def host_values(window: list[Sample], pick: Callable[[dict[str, Any]], Any]) -> list[float | None]:
    values: list[float | None] = []
    for sample in window:
        value = None
        with suppress(TypeError, KeyError, ValueError, AttributeError):
            value = pick(sample.get("host") or {})
        values.append(None if value is None else float(value))
    return values


def pool_models(window: list[Sample]) -> list[str]:
    """Models in the order they first appear in the window: each keeps its colour."""
    order: list[str] = []
    for sample in window:
        for model in (sample.get("pool") or {}).get("models") or []:
            name = str(model.get("model"))
            if name not in order:
                order.append(name)
    return order


def pool_stack(window: list[Sample], order: list[str]) -> list[tuple[str, str, float, list[float | None]]]:
    """(model, kind, shade, cumulative bytes per sample) bottom-up: plotting the tops with a fill
    from the highest down gives a stacked area. A model not resident in a sample, or a sample
    without pool data, is a gap (None), so an unloaded model leaves no line along the axis."""
    layers: list[tuple[str, str, float, list[float | None]]] = [
        (model, kind, shade, []) for model in order for kind, shade in POOL_KINDS]
    for sample in window:
        pool = sample.get("pool")
        if not isinstance(pool, dict) or "models" not in pool:
            for layer in layers:
                layer[3].append(None)
            continue
        sizes = {str(m.get("model")): m.get("bytes") or {} for m in pool.get("models") or []}
        total = 0.0
        for model, kind, _, values in layers:
            if model not in sizes:
                values.append(None)
                continue
            total += float(sizes[model].get(kind) or 0)
            values.append(total)
    return layers


def pool_markers(window: list[Sample], events: Iterable[dict[str, Any]]) -> list[tuple[int, str, str]]:
    """Pool events (load, evicted, ...) placed at the first sample taken after them, as
    (x counted back from the newest sample, label, colour). Server timestamps on both sides,
    so a remote server's clock needs no correction."""
    stamps = [float(s.get("ts") or 0) for s in window]
    found = []
    for event in events:
        mark = POOL_MARKS.get(str(event.get("event")))
        ts = event.get("ts")
        if mark is None or not isinstance(ts, int | float) or not stamps:
            continue
        i = bisect_left(stamps, float(ts))
        if i == 0 or i >= len(stamps):  # before the window, or newer than the newest sample
            continue
        x, label = i - (len(stamps) - 1), f"{mark[0]}{event.get('model')}"
        if found and found[-1][0] == x:  # a swap: the eviction and the load share one sample
            _, before, color = found[-1]
            found[-1] = (x, f"{before} {label}", "success" if mark[1] == "success" else color)
        else:
            found.append((x, label, mark[1]))
    return found


def span_text(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:g} min"


def nice_max(value: float) -> float:
    """A round upper bound for an axis: 1, 2 or 5 times a power of ten (or of 1000 bytes)."""
    if value <= 0:
        return 1.0
    magnitude = 1.0
    while magnitude * 10 <= value:
        magnitude *= 10
    while magnitude > value:
        magnitude /= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


# --------------------------------------------------------------------------------- the pane
class GpuPane(Pane):
    PANE_ID = "gpu"
    TITLE = "GPU"
    BINDINGS = [
        Binding("r", "range", "Range", id="gpu-range"),
        Binding("p", "pause", "Pause", id="gpu-pause"),
        Binding("ctrl+r", "refresh", "Refresh", id="gpu-refresh", show=False),
    ]
    COMMANDS = (
        ("GPU: change the chart range", "Show the last minute or the last five minutes", "range"),
        ("GPU: pause or resume the charts", "Freeze the view to read it; samples keep arriving", "pause"),
        ("GPU: refresh", "Read the telemetry history from the server again", "refresh"),
    )

    DEFAULT_CSS = """
    GpuPane #gpu-body {
        height: 1fr;
    }
    GpuPane #gpu-status {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    GpuPane #gpu-notice {
        height: auto;
        border: round $warning;
        border-title-color: $warning;
        border-title-style: bold;
        padding: 0 1;
        display: none;
    }
    GpuPane #gpu-notice.-error {
        border: round $error;
        border-title-color: $error;
    }
    GpuPane #gpu-cards {
        height: auto;
        grid-size: 2;
        grid-rows: 6;
    }
    GpuPane #gpu-charts {
        height: 1fr;
        min-height: 7;
    }
    GpuPane #gpu-lower {
        height: 1fr;
        min-height: 8;
    }
    GpuPane #gpu-procs {
        width: 1fr;
        min-width: 60;
        height: 1fr;
        border: round $panel;
        border-title-color: $primary;
        border-title-style: bold;
        border-subtitle-color: $text-muted;
    }
    GpuPane #gpu-host {
        height: 1fr;
        min-height: 7;
    }
    GpuPane.-no-gpu #gpu-cards, GpuPane.-no-gpu #gpu-charts {
        display: none;
    }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.samples: deque[Sample] = deque(maxlen=HISTORY)
        self.frozen_view: list[Sample] | None = None  # what a paused pane keeps showing
        self.range_index = 0
        self.charts: dict[str, HistoryChart] = {}
        self.cards: dict[int, GpuCard] = {}
        self.need_history = True
        self.history_error: str | None = None
        self.redraws = 0  # counted: tests check that a hidden pane does no drawing work
        self._rows: list[tuple[Any, ...]] = []

    def compose(self) -> ComposeResult:
        # The charts are mounted on the first show: plotext is imported only then.
        with VerticalScroll(id="gpu-body"):
            yield Static("", id="gpu-status")
            yield Static("", id="gpu-notice")
            yield Grid(id="gpu-cards")
            yield Horizontal(id="gpu-charts")
            with Horizontal(id="gpu-lower"):
                yield DataTable(id="gpu-procs", cursor_type="row", show_cursor=False)
            yield Horizontal(id="gpu-host")

    def on_mount(self) -> None:
        table = self.query_one("#gpu-procs", DataTable)
        table.border_title = "Processes"
        for column in PROCESS_COLUMNS:
            table.add_column(column, key=column)
        self.show_status_line()
        # Import plotext in the background a while after start-up, so the first press of the
        # pane key does not wait ~0.2 s for it (and the first paint never does).
        self.set_timer(PREWARM_AFTER_S, self.prewarm)

    def prewarm(self) -> None:
        self.run_worker(import_charts, thread=True, group="gpu-prewarm", exit_on_error=False)

    # -- hooks --------------------------------------------------------------------------------
    @property
    def shown(self) -> bool:
        try:
            return self.is_mounted and self.abi.active_pane == self.PANE_ID
        except NoMatches:  # the app is closing
            return False

    def pane_shown(self) -> None:
        if not self.charts:
            self.build()
        if self.need_history:
            self.fetch_history()
        self.redraw()

    def server_status(self, status: LinkStatus) -> None:
        if self.shown:
            self.show_status_line()

    def server_event(self, event: ServerEvent) -> None:
        if event.type == "telemetry.sample":
            if self.ingest(event.data) and self.shown and self.frozen_view is None:
                self.redraw()
        elif event.type == CONNECTION_OPEN:
            # A new connection may be a restarted server: read its history again (the merge
            # notices a restart by its sample numbers going back).
            self.need_history = True
            if self.shown:
                self.fetch_history()

    def on_resize(self, event: Resize) -> None:
        self.arrange_cards()

    # -- data ---------------------------------------------------------------------------------
    def ingest(self, sample: Sample) -> bool:
        """Add one sample; False for one we already have."""
        if not isinstance(sample, dict) or "gpu" not in sample:
            return False
        if self.samples:
            last = self.samples[-1]
            seq, last_seq = sample.get("seq"), last.get("seq")
            if isinstance(seq, int) and isinstance(last_seq, int) and seq <= last_seq:
                if seq == last_seq or float(sample.get("ts") or 0) <= float(last.get("ts") or 0):
                    return False  # already here (the history and an event may both carry it)
                self.samples.clear()  # numbering started again: a restarted server
        self.samples.append(sample)
        return True

    def merge_history(self, history: list[Sample]) -> None:
        known = {s.get("seq"): s for s in self.samples}
        if history and self.samples and history[-1].get("seq", 0) < self.samples[-1].get("seq", 0):
            known = {}  # the server's numbering went back: it restarted, our samples are stale
        for sample in history:
            if isinstance(sample, dict) and "gpu" in sample:
                known.setdefault(sample.get("seq"), sample)
        ordered = sorted(known.values(), key=lambda s: (float(s.get("ts") or 0), s.get("seq") or 0))
        self.samples = deque(ordered, maxlen=HISTORY)

    @work(exclusive=True, group="gpu-history")
    async def fetch_history(self) -> None:
        if self.client is None:
            return  # the connection's open event asks again
        try:
            snapshot = await self.client.telemetry(history=HISTORY)
        except ClientError as exc:
            if exc.status == 404:
                self.history_error = "this server has no telemetry API (GET /api/telemetry)"
                self.need_history = False
            with suppress(NoMatches):
                self.redraw()
            return
        self.need_history = False
        self.history_error = None
        history = snapshot.get("history") or []
        latest = snapshot.get("latest")
        if not history and isinstance(latest, dict):
            history = [latest]
        self.merge_history(history)
        if self.shown:  # else the next pane_shown draws it
            with suppress(NoMatches):  # the app may be closing under this worker
                self.redraw()

    # -- actions ------------------------------------------------------------------------------
    def action_range(self) -> None:
        self.range_index = (self.range_index + 1) % len(RANGES_S)
        self.redraw()

    def action_pause(self) -> None:
        self.frozen_view = None if self.frozen_view is not None else list(self.samples)
        self.redraw()

    def action_refresh(self) -> None:
        self.need_history = True
        self.fetch_history()

    # -- drawing ------------------------------------------------------------------------------
    def build(self) -> None:
        from abi_tui.widgets.charts import HistoryChart

        def percent(value: float) -> str:
            return f"{value:.0f}"

        def watts(value: float) -> str:
            return f"{value:.0f}"

        def size(value: float) -> str:
            return human_bytes(value).replace(".0 ", " ")

        self.charts = {
            "util": HistoryChart("utilization %", y_format=percent, id="gpu-chart-util"),
            "memory": HistoryChart("memory used %", y_format=percent, id="gpu-chart-memory"),
            "temperature": HistoryChart("temperature °C", y_format=percent, id="gpu-chart-temperature"),
            "power": HistoryChart("power W", y_format=watts, id="gpu-chart-power"),
            "pool": HistoryChart("model pool", y_format=size, id="gpu-chart-pool"),
            "cpu": HistoryChart("host CPU %", y_format=percent, id="gpu-chart-cpu"),
            "ram": HistoryChart("host RAM", y_format=size, id="gpu-chart-ram"),
        }
        self.query_one("#gpu-charts").mount_all([self.charts[k] for k in ("util", "memory", "temperature", "power")])
        self.query_one("#gpu-lower").mount(self.charts["pool"])
        self.query_one("#gpu-host").mount_all([self.charts["cpu"], self.charts["ram"]])

    @property
    def view(self) -> list[Sample]:
        return self.frozen_view if self.frozen_view is not None else list(self.samples)

    def window(self) -> tuple[list[Sample], int, float]:
        """The samples of the current range, the range in samples, and the sampling interval."""
        view = self.view
        interval = float((view[-1].get("interval_s") if view else None) or 1.0)
        # Fast sampling holds less time in the 300 samples: the range shrinks to what there is.
        span = max(2, min(HISTORY, round(RANGES_S[self.range_index] / interval)))
        return view[-span:], span, interval

    def redraw(self) -> None:
        if not self.is_mounted:
            return
        from abi_tui.telemetry.schema import GpuStatus, HostRecord

        self.redraws += 1
        window, span, _ = self.window()
        latest = window[-1] if window else None
        gpu = GpuStatus.from_dict(latest["gpu"]) if latest and isinstance(latest.get("gpu"), dict) else None
        host = HostRecord.from_dict(latest["host"]) if latest and isinstance(latest.get("host"), dict) else None
        pool = latest.get("pool") if latest and isinstance(latest.get("pool"), dict) else None
        no_gpu = gpu is not None and gpu.state in ("no_gpu", "no_driver") and not gpu_indices(window)
        self.set_class(no_gpu, "-no-gpu")
        self.show_status_line()
        self.show_notice(gpu)
        self.show_cards(gpu.gpus if gpu else [])
        self.show_processes(gpu, host, pool)
        if not self.charts:
            return
        self.draw_gpu_charts(window, span)
        self.draw_pool(window, span, pool)
        self.draw_host(window, span, host)

    def show_status_line(self) -> None:
        if not self.is_mounted:
            return
        view = self.view
        muted = "$text-muted"
        latest = view[-1] if view else None
        parts: list[Content | str] = []
        if latest is None:
            parts.append(self.history_error or ("waiting for the first telemetry sample..." if self.link.connected
                                                else "waiting for the server..."))
        else:
            gpu = latest.get("gpu") or {}
            count = len(gpu.get("gpus") or [])
            if gpu.get("state") == "ok" or count:
                parts.append(f"{count} GPU{'s' if count != 1 else ''}")
            if gpu.get("driver_version"):
                parts.append(f"driver {gpu['driver_version']}")
            _, span, interval = self.window()
            parts.append(f"a sample every {interval:g} s")
            parts.append(f"last {span_text(span * interval)} (r)")
            if self.frozen_view is not None:
                parts.append(Content.styled("paused (p resumes)", "bold $warning"))
            elif not self.link.connected:
                parts.append(Content.styled("server unreachable: the last samples received", "$warning"))
            else:
                parts.append("live")
        line = Content(" · ").join(Content.styled(p, muted) if isinstance(p, str) else p for p in parts)
        self.query_one("#gpu-status", Static).update(line)

    def show_notice(self, gpu: GpuStatus | None) -> None:
        notice = self.query_one("#gpu-notice", Static)
        state = gpu.state if gpu else None
        if gpu is None or state == "ok":
            notice.display = False
            return
        retry = f"{self.fmt.seconds(gpu.retry_in_s)}" if gpu.retry_in_s is not None else None
        if state == "error":
            notice.border_title = "GPU telemetry error"
            lines = [
                Content.assemble(("The driver says: ", "bold"), (gpu.reason or "unknown error", "bold $error")),
                Content(gpu.hint or "NVML failed while running; retrying with backoff."),
                Content.styled("Retrying NVML" + (f", next try in {retry}" if retry else "")
                               + "; the charts keep their history and the host below stays live.", "$text-muted"),
            ]
        else:
            notice.border_title = "No GPU telemetry"
            lines = [
                Content.assemble(("No NVIDIA GPU / driver: ", "bold"), (gpu.reason or "unknown reason", "bold $warning")),
                *([Content(gpu.hint)] if gpu.hint else []),
                Content.styled("Host CPU/RAM and the model pool below stay live"
                               + (f"; NVML is checked again in {retry}." if retry else "."), "$text-muted"),
            ]
        notice.set_class(state == "error", "-error")
        notice.update(Content("\n").join(lines))
        notice.display = True

    def show_cards(self, records: list[GpuRecord]) -> None:
        from abi_tui.widgets.gpu_card import GpuCard

        grid = self.query_one("#gpu-cards", Grid)
        wanted = {r.index for r in records}
        for index in [i for i in self.cards if i not in wanted]:
            self.cards.pop(index).remove()
        new = []
        for record in records:
            card = self.cards.get(record.index)
            if card is None:
                card = self.cards[record.index] = GpuCard(record, id=f"gpu-card-{record.index}")
                new.append(card)
            else:
                card.show(record)
        if new:
            grid.mount_all(new)
        grid.display = bool(records)
        self.arrange_cards()

    def arrange_cards(self) -> None:
        if not self.cards:
            return
        width = self.size.width or 120
        columns = max(1, min(len(self.cards), width // CARD_MIN_WIDTH))
        grid = self.query_one("#gpu-cards", Grid)
        if grid.styles.grid_size_columns != columns:
            grid.styles.grid_size_columns = columns

    def show_processes(self, gpu: GpuStatus | None, host: HostRecord | None, pool: dict[str, Any] | None) -> None:
        table = self.query_one("#gpu-procs", DataTable)
        active = self.link.health.model if self.link.health else None
        resident = [str(m.get("model")) for m in (pool or {}).get("models") or []]

        def models_text(names: list[str]) -> str:
            ordered = sorted(names, key=lambda n: n != active)
            return ", ".join(f"● {n}" if n == active else n for n in ordered) or "-"

        server_pid = host.process.pid if host and host.process else None
        rows: list[tuple[Any, ...]] = []
        self_on_gpu = False
        for record in gpu.gpus if gpu else []:
            for process in record.processes:
                own = process.is_self or process.pid == server_pid
                self_on_gpu = self_on_gpu or own
                name = process.name or "?"
                rows.append((f"{record.index}-{process.pid}", own, str(record.index), str(process.pid), process.kind,
                             f"abi ({name})" if own else name,
                             human_bytes(process.used_memory_bytes) if process.used_memory_bytes is not None else "N/A",
                             models_text(process.models or resident) if own else ""))
        if host and host.process and not self_on_gpu:
            # The server runs on the CPU (or NVML cannot see it): still one row, with its models.
            process = host.process
            rows.append((f"host-{process.pid}", True, "CPU", str(process.pid), "host", f"abi ({process.name or '?'})",
                         human_bytes(process.rss_bytes) if process.rss_bytes is not None else "N/A",
                         models_text(resident)))
        if rows == self._rows:
            return
        self._rows = rows
        # Widths from the data: DataTable's own auto width lags behind a clear() and refill.
        widths = [max([len(label), *(len(row[i + 2]) for row in rows)]) for i, label in enumerate(PROCESS_COLUMNS)]
        table.clear(columns=True)
        for label, width in zip(PROCESS_COLUMNS, widths, strict=True):
            table.add_column(label, width=width, key=label)
        for key, own, *cells in rows:
            style = "bold $accent" if own else ""
            table.add_row(*(Content.styled(c, style) if style else c for c in cells), key=key)
        count = f"{len(rows)} process{'es' if len(rows) != 1 else ''}"
        on_host = any(row[2] == "CPU" for row in rows)
        # A host row's memory is the server's RSS, not GPU memory: say so where it appears.
        table.border_subtitle = f"CPU row: RSS · {count}" if on_host else count

    def draw_gpu_charts(self, window: list[Sample], span: int) -> None:
        from abi_tui.widgets.charts import LegendEntry, Series

        indices = gpu_indices(window)
        latest_gpus = ((window[-1].get("gpu") or {}).get("gpus") or []) if window else []
        limits = [g.get("power_limit_w") for g in latest_gpus if g.get("power_limit_w")]

        def chart(key: str, pick: Callable[[dict[str, Any]], Any], y_range: Callable[[list[float]], tuple[float, float]]) -> None:
            series: list[Series] = []
            legend: list[LegendEntry] = []
            for index in indices:
                values = gpu_values(window, index, pick)
                color = GPU_COLORS[index % len(GPU_COLORS)]
                known = [v for v in values if v is not None]
                legend.append(LegendEntry(f"GPU {index}" + ("" if known else " N/A"), [(color, 0.0)] if known else []))
                if known:
                    series.append(Series(f"GPU {index}", values, color))
            seen = [v for s in series for v in s.values if v is not None]
            self.charts[key].show(series, span=span, y_range=y_range(seen), legend=legend,
                                  empty_text="N/A" if indices else "no GPU")

        def percent(_: list[float]) -> tuple[float, float]:
            return (0.0, 100.0)

        chart("util", lambda g: g.get("utilization_pct"), percent)
        chart("memory", memory_percent, percent)
        chart("temperature", lambda g: g.get("temperature_c"), lambda seen: (0.0, max([100.0, *seen])))
        chart("power", lambda g: g.get("power_w"),
              lambda seen: (0.0, nice_max(max([*limits, *seen, 1.0]))))

    def draw_pool(self, window: list[Sample], span: int, pool: dict[str, Any] | None) -> None:
        from abi_tui.widgets.charts import LegendEntry, Marker, Series

        chart = self.charts["pool"]
        order = pool_models(window)
        layers = pool_stack(window, order)
        colors = {model: MODEL_COLORS[i % len(MODEL_COLORS)] for i, model in enumerate(order)}
        # Highest layer first: each fill is painted over by the layers below it.
        series = [Series(f"{model} {kind}", values, colors[model], shade, fill=True)
                  for model, kind, shade, values in reversed(layers)]
        tops = [v for _, _, _, values in layers for v in values if v is not None]
        peak = max(tops, default=0.0)
        events = (pool or {}).get("events") or []
        markers = [Marker(x, label, color) for x, label, color in pool_markers(window, events)]
        legend = [LegendEntry(model, [(colors[model], shade) for _, shade in POOL_KINDS]) for model in order]
        if order:
            legend.append(LegendEntry("weights·kv·compute"))
        if pool is None:
            title = "model pool"
        else:
            title = (f"model pool · {human_bytes(pool.get('used_bytes'))} of {human_bytes(pool.get('budget_bytes'))}"
                     f" · loads {pool.get('loads', 0)} · evictions {pool.get('evictions', 0)}")
        chart.border_title = title
        chart.show(series if peak else [], span=span, y_range=(0.0, nice_max(peak * 1.3) if peak else 1.0),
                   markers=markers, legend=legend,
                   empty_text="no pool data" if pool is None else "no model resident")

    def draw_host(self, window: list[Sample], span: int, host: HostRecord | None) -> None:
        from abi_tui.widgets.charts import Series

        cpu, ram = self.charts["cpu"], self.charts["ram"]
        if host is not None and host.load_avg:
            cpu.border_title = f"host CPU % · {host.cpu_count or '?'} cores · load {host.load_avg[0]:.2f}"
        elif host is not None:
            cpu.border_title = f"host CPU % · {host.cpu_count or '?'} cores"
        cpu.show([Series("all cores", host_values(window, lambda h: h.get("cpu_percent")), "primary"),
                  Series("busiest core", host_values(window, lambda h: max(h["cpu_per_core"])), "warning")],
                 span=span, y_range=(0.0, 100.0), empty_text="N/A" if window else "waiting...")
        total = float(host.memory_total_bytes) if host and host.memory_total_bytes else 0.0
        if host is not None:
            ram.border_title = (f"host RAM · {human_bytes(host.memory_used_bytes)} of {human_bytes(host.memory_total_bytes)}"
                                + (f" · {host.error}" if host.error else ""))
        process = host.process if host else None
        subtitle = ""
        if process is not None:
            cpu_text = f"{process.cpu_percent:.0f}%" if process.cpu_percent is not None else "N/A"
            subtitle = f"· server pid {process.pid} · CPU {cpu_text}"
        ram.show([Series("used", host_values(window, lambda h: h.get("memory_used_bytes")), "primary"),
                  Series("server RSS", host_values(window, lambda h: (h.get("process") or {}).get("rss_bytes")), "accent")],
                 span=span, y_range=(0.0, total or 1.0), subtitle=subtitle,
                 empty_text="N/A" if window else "waiting...")
