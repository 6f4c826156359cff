"""Bench pane: the streaming benchmark from the dashboard.

A run form (target, preset or one mock pattern or a model, load, requests/duration, max tokens,
transport, SLO), live charts while a run goes (ITL over time, TTFT histogram, aggregate tok/s),
the finished run's summary with the metric definitions, the earlier runs saved in
`settings.bench_dir` (where `abi bench` saves them too), and a comparison of two runs.

The load generator (`abi_tui.bench`) is itself a client of the server, so the pane drives it
directly against the server's URL. It runs on its own event loop in a worker thread: on the UI's
loop, every frame drawn would delay the token arrivals the benchmark timestamps. Its LiveSamples
go into a thread-safe deque that the UI drains on a timer, so charts redraw at most 1/REDRAW_S
times a second whatever the token rate. The benchmark and plotext are imported on first use:
`abi dash` paints its first frame without them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.css.query import NoMatches
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Button, DataTable, Input, Label, Select, Static, TabbedContent, TabPane

from abi_tui.bench.presets import PATTERN_ALIASES, PRESETS
from abi_tui.connection import LinkStatus
from abi_tui.panes.base import Pane
from abi_tui.widgets.bench_live import LiveRun
from abi_tui.widgets.bench_summary import summary_renderable

if TYPE_CHECKING:
    from abi_tui.bench.results import BenchResult, MetricDelta, RunSummary
    from abi_tui.bench.runner import BenchConfig, LiveSample

log = logging.getLogger("abi.dash.bench")

REDRAW_S = 0.25
VIEWS = ("live", "summary", "runs", "compare")
TARGETS = (("connected server", "connected"), ("another URL", "url"), ("new abi server", "new"))
WORKLOADS = (("preset's patterns", "patterns"),
             *((f"mock {short}", f"pattern:{short}") for short in PATTERN_ALIASES),
             ("active model", "active"), ("model id", "model"))
PRESET_CHOICES = (*((name, name) for name in PRESETS), ("none: one scenario", "none"))
LOADS = (("concurrency", "concurrency"), ("rate req/s", "rate"), ("poisson req/s", "poisson"),
         ("sweep from", "sweep"))
# Defaults of a run without a preset (abi_tui.bench.runner), for the form's placeholders.
PLAIN_REQUESTS, PLAIN_MAX_TOKENS = 50, 64
RUN_COLUMNS = (("", "mark"), ("run", "run"), ("ok/err", "req"), ("tok/s", "tps"), ("TTFT", "ttft"),
               ("ITL", "itl"), ("scenarios", "models"))
COMPARE_COLUMNS = ("scenario", "metric", "A", "B", "Δ", "B/A", "")
# metric path of abi_tui.bench.results.COMPARED -> label, digits
METRIC_LABELS: dict[str, tuple[str, int]] = {
    "ttft_ms.p50": ("TTFT p50 ms", 2), "ttft_ms.p99": ("TTFT p99 ms", 2), "itl_ms.p50": ("ITL p50 ms", 2),
    "itl_ms.p99": ("ITL p99 ms", 2), "tpot_ms.p50": ("TPOT p50 ms", 2), "e2e_ms.p50": ("E2E p50 ms", 2),
    "e2e_ms.p99": ("E2E p99 ms", 2), "output_tokens_per_s": ("output tok/s", 1),
    "requests_per_s": ("requests/s", 2), "requests.errors": ("errors", 0),
    "goodput.fraction": ("goodput fraction", 3), "pipeline_overhead.itl_ms": ("ITL overhead ms", 3),
}


def short_model(model: str) -> str:
    """`mock/constant_rate?min_ms=1&max_ms=10` -> `constant_rate`: the runs list is narrow."""
    return model.split("?", 1)[0].removeprefix("mock/")


class BenchPane(Pane):
    PANE_ID = "bench"
    TITLE = "Bench"
    BINDINGS = [
        Binding("ctrl+r", "run", "Run", id="bench-run"),
        Binding("escape", "cancel", "Cancel run", id="bench-cancel"),
        Binding("space", "mark", "Mark A/B", id="bench-mark"),
        Binding("c", "compare", "Compare", id="bench-compare"),
        Binding("l", "view('live')", "Live charts", id="bench-live", show=False),
        Binding("s", "view('summary')", "Summary", id="bench-summary", show=False),
        Binding("r", "view('runs')", "Earlier runs", id="bench-runs", show=False),
        Binding("f5", "refresh_runs", "Reload runs", id="bench-refresh", show=False),
    ]
    COMMANDS = (
        ("Bench: run", "Run the benchmark the form describes", "run"),
        ("Bench: cancel the run", "Stop the running benchmark", "cancel"),
        ("Bench: live charts", "ITL over time, TTFT histogram and tok/s of the run", "view('live')"),
        ("Bench: summary", "Percentiles, rates and definitions of the latest or opened run", "view('summary')"),
        ("Bench: earlier runs", "The runs saved in $ABI_HOME/bench", "view('runs')"),
        ("Bench: compare two runs", "Delta per metric between the runs marked A and B", "compare"),
        ("Bench: reload the list of runs", "Read $ABI_HOME/bench again", "refresh_runs"),
    )

    DEFAULT_CSS = """
    BenchPane {
        layout: horizontal;
    }
    #bench-left {
        width: 36;
    }
    #bench-form {
        height: auto;
        border: round $panel;
        padding: 0 1;
    }
    .bench-row {
        height: 1;
    }
    .bench-label {
        width: 11;
        color: $text-muted;
    }
    .bench-row > Select, .bench-row > Input {
        width: 1fr;
    }
    #bench-load-kind {
        width: 16;
    }
    #bench-buttons {
        height: 1;
        margin-top: 1;
    }
    #bench-buttons > Button {
        width: 1fr;
        min-width: 8;
        margin-right: 1;
    }
    #bench-status {
        height: 1fr;
        border: round $panel;
        padding: 0 1;
    }
    #bench-views {
        width: 1fr;
        height: 1fr;
    }
    #bench-views > ContentSwitcher, #bench-views TabPane {
        height: 1fr;
    }
    #bench-live-title {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    #bench-charts, #bench-charts-row {
        height: 1fr;
    }
    #bench-summary-scroll {
        height: 1fr;
        padding: 0 1;
    }
    #bench-runs-table, #bench-compare-table {
        height: 1fr;
    }
    .bench-hint {
        height: auto;
        padding: 0 1;
        color: $text-muted;
    }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inbox: deque[LiveSample] = deque()  # appended by the benchmark's thread
        self.live: LiveRun | None = None
        self.running = False
        self.outcome: Content | None = None  # what the status box says after a run
        self.result: BenchResult | None = None  # the run the summary shows
        self.runs: list[RunSummary] = []
        self.marks: list[str] = []  # paths of the runs marked A and B
        self.comparison: list[MetricDelta] | None = None
        self._run_loop: asyncio.AbstractEventLoop | None = None
        self._run_task: asyncio.Task[Any] | None = None
        self._cancel_requested = False
        self._timer: Timer | None = None
        self._charts = False
        self._drawn = -1
        self._select_after_refresh: str | None = None

    # -- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        def row(label: str, *widgets: Any, id: str | None = None) -> Horizontal:
            return Horizontal(Label(label, classes="bench-label"), *widgets, classes="bench-row", id=id)

        first = next(iter(PRESETS))
        with Vertical(id="bench-left"):
            with Vertical(id="bench-form") as form:
                form.border_title = "Run"
                yield row("target", Select(TARGETS, value="connected", allow_blank=False, compact=True,
                                           id="bench-target"))
                yield row("URL", Input(placeholder="http://host:port", compact=True, id="bench-url"),
                          id="bench-url-row")
                yield row("preset", Select(PRESET_CHOICES, value=first, allow_blank=False, compact=True,
                                           id="bench-preset"))
                yield row("workload", Select(WORKLOADS, value="patterns", allow_blank=False, compact=True,
                                             id="bench-workload"))
                yield row("model id", Input(placeholder="mock/burst, a cached model, a remote id", compact=True,
                                            id="bench-model"), id="bench-model-row")
                yield row("load", Select(LOADS, value="concurrency", allow_blank=False, compact=True,
                                         id="bench-load-kind"),
                          Input(compact=True, id="bench-load-value"))
                yield row("requests", Input(compact=True, id="bench-requests"))
                yield row("duration s", Input(placeholder="none", compact=True, id="bench-duration"))
                yield row("max tokens", Input(compact=True, id="bench-max-tokens"))
                yield row("transport", Select((("SSE", "sse"), ("WebSocket", "ws")), value="sse", allow_blank=False,
                                              compact=True, id="bench-transport"))
                yield row("SLO", Input(placeholder="ttft=200ms,itl=50ms", compact=True, id="bench-slo"))
                with Horizontal(id="bench-buttons"):
                    yield Button("Run", variant="primary", compact=True, id="bench-run-button")
                    yield Button("Cancel", variant="error", compact=True, disabled=True, id="bench-cancel-button")
            yield Static("", id="bench-status")
        with TabbedContent(id="bench-views", initial="bench-runs"):
            with TabPane("Live", id="bench-live"):
                yield Static("", id="bench-live-title")
                yield Vertical(id="bench-charts")
            with TabPane("Summary", id="bench-summary"), VerticalScroll(id="bench-summary-scroll"):
                yield Static("", id="bench-summary-body")
            with TabPane("Runs", id="bench-runs"):
                yield DataTable(cursor_type="row", zebra_stripes=True, id="bench-runs-table")
                yield Static("", id="bench-runs-hint", classes="bench-hint")
            with TabPane("Compare", id="bench-compare"):
                yield Static("", id="bench-compare-head", classes="bench-hint")
                yield DataTable(cursor_type="row", id="bench-compare-table")

    def on_mount(self) -> None:
        self.query_one("#bench-status").border_title = "Progress"
        self.query_one("#bench-url-row").display = False
        self.query_one("#bench-model-row").display = False
        table = self.query_one("#bench-runs-table", DataTable)
        for label, key in RUN_COLUMNS:
            table.add_column(label, key=key)
        self.show_placeholders()
        self.render_live_title()
        self.render_status()
        self.render_summary()
        self.render_compare(None, None, None)

    def pane_shown(self) -> None:
        self.ensure_charts()
        self.refresh_runs()

    def server_status(self, status: LinkStatus) -> None:
        if not self.running and self.outcome is None:
            self.render_status()

    # -- form ---------------------------------------------------------------------------------
    @property
    def bench_dir(self) -> Path:
        return self.abi.settings.bench_dir

    def value(self, widget_id: str) -> str:
        widget = self.query_one(f"#{widget_id}")
        if isinstance(widget, Select):
            return str(widget.value)
        assert isinstance(widget, Input)
        return widget.value.strip()

    def on_select_changed(self, event: Select.Changed) -> None:
        select_id = event.select.id
        if select_id == "bench-target":
            self.query_one("#bench-url-row").display = event.value == "url"
            if not self.running and self.outcome is None:
                self.render_status()
        elif select_id == "bench-workload":
            self.query_one("#bench-model-row").display = event.value == "model"
        elif select_id in ("bench-preset", "bench-load-kind"):
            self.show_placeholders()

    def show_placeholders(self) -> None:
        """Blank fields take the preset's values (or the plain run's): the placeholders say which."""
        preset = PRESETS.get(self.value("bench-preset"))
        kind = self.value("bench-load-kind")
        load = self.query_one("#bench-load-value", Input)
        if kind in ("rate", "poisson"):
            load.placeholder = "required, e.g. 5"
        elif kind == "sweep":
            load.placeholder = "1"
        else:
            load.placeholder = f"{preset.concurrency} (preset)" if preset else "1"
        self.query_one("#bench-requests", Input).placeholder = \
            f"{preset.runs} per scenario (preset)" if preset else str(PLAIN_REQUESTS)
        self.query_one("#bench-max-tokens", Input).placeholder = \
            f"{', '.join(map(str, preset.token_counts))} (preset)" if preset else str(PLAIN_MAX_TOKENS)

    def number(self, widget_id: str, name: str, integer: bool) -> float | None:
        text = self.value(widget_id)
        if not integer:
            text = text.removesuffix("s").strip()  # "30s" reads as 30
        if not text:
            return None
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise ValueError(f"{name} must be a positive {'whole ' if integer else ''}number, got {text!r}") from None
        if not value > 0 or value != value or value == float("inf"):
            raise ValueError(f"{name} must be a positive number, got {text}")
        return value

    def target_lines(self) -> tuple[str, str]:
        target = self.value("bench-target")
        if target == "url":
            return "another server", self.value("bench-url") or "(give its URL)"
        if target == "new":
            return "a new abi server", "started for the run, then stopped"
        return "connected server", self.fmt.address(self.link.url) if self.link.url else "(starting)"

    def build_config(self) -> BenchConfig:
        """The form as a BenchConfig; ValueError with a reason a user can act on."""
        from abi_tui.bench.loadgen import LoadSpec
        from abi_tui.bench.runner import BenchConfig, plan_scenarios
        from abi_tui.bench.stats import parse_slo

        target = self.value("bench-target")
        url: str | None = None
        token = self.abi.token
        if target == "connected":
            if self.client is None:
                raise ValueError("the dashboard has no server yet; wait for it or choose another target")
            url, token = self.client.url, self.client.token
        elif target == "url":
            url = self.value("bench-url")
            if not url.startswith(("http://", "https://")):
                raise ValueError("the URL must start with http:// or https://")
        preset = self.value("bench-preset")
        workload = self.value("bench-workload")
        model = pattern = None
        if workload.startswith("pattern:"):
            pattern = workload.partition(":")[2]
        elif workload == "active":
            model = self.link.health.model if self.link.health else None
            if not model or target != "connected":
                raise ValueError("no active model: the connected server serves none (pick a model id or a pattern)"
                                 if target == "connected" else "'active model' means the connected server's")
        elif workload == "model":
            model = self.value("bench-model")
            if not model:
                raise ValueError("give a model id, or pick a mock pattern")
        kind = self.value("bench-load-kind")
        load_value = self.number("bench-load-value", "the load", integer=kind in ("concurrency", "sweep"))
        load = None
        if kind in ("rate", "poisson"):
            if load_value is None:
                raise ValueError(f"a {kind} load needs requests per second")
            load = LoadSpec(kind, load_value)
        elif kind == "sweep" or load_value is not None:
            load = LoadSpec(kind, load_value or 1)
        requests = self.number("bench-requests", "requests", integer=True)
        max_tokens = self.number("bench-max-tokens", "max tokens", integer=True)
        slo_text = self.value("bench-slo")
        config = BenchConfig(
            url=url, token=token, model=model, pattern=pattern, preset=None if preset == "none" else preset,
            load=load, requests=int(requests) if requests else None,
            duration_s=self.number("bench-duration", "duration", integer=False),
            max_tokens=int(max_tokens) if max_tokens else None, transport=self.value("bench-transport"),
            slo=parse_slo(slo_text) if slo_text else {})
        plan_scenarios(config)  # bad combinations fail here, before anything starts
        return config

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if (event.input.id or "").startswith("bench-"):
            event.stop()
            self.action_run()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "bench-run-button":
            self.action_run()
        elif event.button.id == "bench-cancel-button":
            self.action_cancel()

    # -- running ------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel":
            return self.running  # Esc does nothing here (and leaves the footer) while idle
        if action == "run":
            return None if self.running else True
        return True

    def action_run(self) -> None:
        if self.running:
            self.notify("a benchmark is running; Esc cancels it", severity="warning")
            return
        try:
            config = self.build_config()
        except ValueError as exc:
            self.notify(getattr(exc, "message", None) or str(exc), title="Cannot start the benchmark",
                        severity="error", timeout=8)
            return
        self.start_run(config)

    def describe(self, config: BenchConfig) -> tuple[str, int]:
        from abi_tui.bench.runner import plan_scenarios

        plans = plan_scenarios(config)
        what = config.preset or "custom"
        names = ", ".join(short_model(p.name) for p in plans)
        load = plans[0].load.describe() if plans else ""
        return f"{what} · {names} · {load}", len(plans)

    def start_run(self, config: BenchConfig) -> None:
        title, scenarios = self.describe(config)
        self.begin_live(title, scenarios)
        self._cancel_requested = False
        self._timer = self.set_interval(REDRAW_S, self.drain)
        self.run_in_thread(config)

    def begin_live(self, title: str, scenarios: int = 1, running: bool = True) -> None:
        """A new run on the Live view (the snapshot tests call this, then `feed`)."""
        self.live = LiveRun(title=title, scenarios=scenarios)
        self.inbox.clear()
        self.outcome = None
        self.set_running(running)
        self.ensure_charts()
        self.show_view("live", focus=False)
        self.render_live_title()
        self.render_status()
        self.redraw_charts(force=True)

    def set_running(self, running: bool) -> None:
        self.running = running
        self.query_one("#bench-run-button", Button).disabled = running
        self.query_one("#bench-cancel-button", Button).disabled = not running
        self.refresh_bindings()

    def feed(self, samples: Iterable[LiveSample]) -> None:
        """Progress from the benchmark: update the status box and (throttled) the charts."""
        if self.live is None:
            return
        for sample in samples:
            self.live.add(sample)
        self.render_status()
        self.redraw_charts()

    def drain(self) -> None:
        samples = []
        while self.inbox:
            samples.append(self.inbox.popleft())
        if samples:
            self.feed(samples)

    class RunEnded(Message):
        """Posted from the benchmark's thread (post_message is thread-safe and never blocks: the
        app may be gone by the time a run ends)."""

        def __init__(self, result: BenchResult | None, error: str | None, cancelled: bool) -> None:
            super().__init__()
            self.result, self.error, self.cancelled = result, error, cancelled

    @work(thread=True, group="bench-run", exit_on_error=False)
    async def run_in_thread(self, config: BenchConfig) -> None:
        """The whole run on this thread's own loop, saved here too (file I/O); whatever happens,
        the pane hears how it ended."""
        result: BenchResult | None = None
        error: str | None = None
        cancelled = False
        try:
            from abi_tui.bench import BenchError, run_benchmark, save_result

            self._run_loop, self._run_task = asyncio.get_running_loop(), asyncio.current_task()
            if self._cancel_requested and self._run_task is not None:
                self._run_task.cancel()
            try:
                result = await run_benchmark(config, self.inbox.append)
            except asyncio.CancelledError:
                cancelled = True
            except (BenchError, ValueError) as exc:
                error = getattr(exc, "message", None) or str(exc)
            finally:
                self._run_loop = self._run_task = None
            if result is not None:
                try:
                    save_result(result, self.bench_dir)
                except OSError as exc:
                    error = f"the run finished but could not be saved in {self.bench_dir}: {exc}"
        except Exception as exc:  # a bug: keep the dashboard up and say what happened
            log.exception("benchmark failed")
            error = f"{exc.__class__.__name__}: {exc}"
        finally:
            self.post_message(self.RunEnded(result, error, cancelled))

    def on_bench_pane_run_ended(self, message: RunEnded) -> None:
        self.run_finished(message.result, message.error, message.cancelled)

    def action_cancel(self) -> None:
        if self.running:
            self.request_cancel()
            self.outcome = Content.styled("Cancelling...", "$warning")
            self.render_status()

    def request_cancel(self) -> None:
        """Cancel the run's task on its own loop; its cleanup (sessions, a server it started) runs there."""
        self._cancel_requested = True
        loop, task = self._run_loop, self._run_task
        if loop is not None and task is not None:
            loop.call_soon_threadsafe(task.cancel)

    def run_finished(self, result: BenchResult | None, error: str | None, cancelled: bool) -> None:
        if not self.is_mounted:
            return
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self.drain()
        self.set_running(False)
        if cancelled:
            self.outcome = Content.styled("Cancelled: nothing saved.", "$warning")
            self.notify("The benchmark was cancelled", title="Bench")
        elif result is None:
            self.outcome = Content.assemble(("Failed: ", "bold $error"), error or "unknown error")
            self.notify(error or "unknown error", title="Benchmark failed", severity="error", timeout=12)
        else:
            ok = sum(s.summary["requests"]["completed"] for s in result.scenarios)
            errors = sum(s.summary["requests"]["errors"] for s in result.scenarios)
            self.outcome = Content.assemble(("Done ", "bold $success"), f"in {result.duration_s:.1f} s: {ok} ok, "
                                            f"{errors} errors\n", (result.run_id, "bold"))
            if error:
                self.outcome += Content.styled(f"\n{error}", "$error")
                self.notify(error, title="Benchmark not saved", severity="error", timeout=12)
            else:
                self.notify(f"Saved as {result.run_id}", title="Benchmark done")
            self.show_result(result, focus=False)
            self._select_after_refresh = result.paths.get("json")
            self.refresh_runs()
        self.render_status()
        self.redraw_charts(force=True)

    def on_unmount(self) -> None:
        if self.running:  # the app is closing: its last thread must not run a whole benchmark first
            self.request_cancel()

    # -- views --------------------------------------------------------------------------------
    def action_view(self, name: str) -> None:
        self.show_view(name)

    def show_view(self, name: str, focus: bool = True) -> None:
        """`focus`: the user asked for the view (keys go to it); a run starting or ending switches
        views without taking the focus from the form, unless it was on the view it hides."""
        if name not in VIEWS:
            return
        views = self.query_one("#bench-views", TabbedContent)
        focused = self.app.focused
        focus = focus or focused is None or views in focused.ancestors
        views.active = f"bench-{name}"
        if name == "live":
            self.ensure_charts()
            self.redraw_charts(force=True)
        elif focus:
            # The summary scrolls with the arrows and pgup/pgdn; the tables move their cursor.
            target = {"summary": "#bench-summary-scroll", "runs": "#bench-runs-table",
                      "compare": "#bench-compare-table"}[name]
            self.query_one(target).focus()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        # The app listens for its own panes' tabs: this inner one's must not reach it.
        event.stop()
        if event.pane.id == "bench-live":
            self.redraw_charts(force=True)

    @property
    def view(self) -> str:
        return self.query_one("#bench-views", TabbedContent).active.removeprefix("bench-")

    def ensure_charts(self) -> None:
        if self._charts:
            return
        from abi_tui.widgets.bench_charts import ItlChart, RateChart, TtftChart

        self._charts = True
        self.query_one("#bench-charts").mount(
            ItlChart(id="bench-itl-chart"),
            Horizontal(TtftChart(id="bench-ttft-chart"), RateChart(id="bench-rate-chart"), id="bench-charts-row"))
        self.call_after_refresh(self.redraw_charts, True)

    def redraw_charts(self, force: bool = False) -> None:
        live = self.live or LiveRun()
        if not self._charts or (not force and (live.version == self._drawn or self.view != "live")):
            return
        from abi_tui.widgets.bench_charts import LiveChart

        charts = list(self.query(LiveChart).results(LiveChart))
        if not charts:  # mounting: drawn by the call after refresh
            return
        for chart in charts:
            chart.show(live)
        self._drawn = live.version
        self.render_live_title()

    # -- rendering ----------------------------------------------------------------------------
    def render_live_title(self) -> None:
        live = self.live
        text = live.title if live else "No run yet: fill in the form and press ctrl+r (Enter in a field runs too)."
        self.query_one("#bench-live-title", Static).update(Content(text))

    def render_status(self) -> None:
        if not self.is_mounted:
            return
        muted = "$text-muted"

        def row(label: str, *value: str | tuple[str, str]) -> Content:
            return Content.assemble((f"{label:<10}", muted), *value)

        live = self.live
        lines: list[Content] = []
        if live is not None and (self.running or self.outcome is not None):
            lines.append(Content.styled(live.title, "bold"))
            if live.scenario:
                lines.append(row("scenario", f"{live.scenario_index}/{live.scenarios or '?'} ",
                                 (short_model(live.scenario), "bold")))
                lines.append(row("phase", live.phase + (f" c={live.level}" if live.level else "")))
                planned = f"/{live.planned}" if live.planned else ""
                lines.append(row("requests", f"{live.done}{planned}",
                                 (f" · {live.errors} errors", "$error" if live.errors else muted)))
                rate = f"{live.tokens_per_s:,.0f}" if live.tokens_per_s else "-"
                lines.append(row("tok/s", rate))
                lines.append(row("elapsed", f"{live.t_s:.1f} s"))
            elif self.running:
                lines.append(Content.styled("starting...", muted))
            if live.last_error:
                lines.append(row("last error", (live.last_error[:120], "$error")))
        if self.outcome is not None:
            lines += [Content(""), self.outcome]
        elif self.running:
            lines += [Content(""), Content.styled("Esc cancels the run.", muted)]
        else:
            kind, where = self.target_lines()
            lines += [Content.styled("Ready.", "bold"), row("target", kind), row("", (where, muted)),
                      Content(""), Content.styled("ctrl+r or Enter in a field runs the form; blank fields "
                                                  "take the preset's values.", muted)]
        self.query_one("#bench-status", Static).update(Content("\n").join(lines))

    def display_path(self, path: str | Path) -> str:
        """Bench files as `$ABI_HOME/bench/...`: short, and the same in every test home."""
        path = Path(path)
        home = self.abi.settings.home
        try:
            return "$ABI_HOME/" + str(path.relative_to(home))
        except ValueError:
            return str(path)

    def show_result(self, result: BenchResult, focus: bool = True) -> None:
        self.result = result
        self.render_summary()
        self.show_view("summary", focus=focus)

    def render_summary(self) -> None:
        body = self.query_one("#bench-summary-body", Static)
        result = self.result
        if result is None:
            body.update(Content.styled("No run to show yet: run one from the form, or open an earlier run "
                                       "(Runs, Enter).", "$text-muted"))
            return
        address = self.fmt.address(result.target.get("url")) if self.fmt.frozen else None
        path = result.paths.get("json")
        body.update(summary_renderable(result, address=address, path=self.display_path(path) if path else None))
        self.query_one("#bench-summary-scroll", VerticalScroll).scroll_home(animate=False)

    # -- earlier runs -------------------------------------------------------------------------
    def action_refresh_runs(self) -> None:
        self.refresh_runs()

    @work(exclusive=True, group="bench-runs")
    async def refresh_runs(self) -> None:
        from abi_tui.bench import list_runs

        runs = await asyncio.to_thread(list_runs, self.bench_dir)  # parses every run file: off the UI loop
        try:
            self.fill_runs(runs)
        except NoMatches:  # the app is closing
            pass

    def fill_runs(self, runs: list[RunSummary]) -> None:
        table = self.query_one("#bench-runs-table", DataTable)
        current = self.selected_run()
        self.runs = runs
        paths = [str(r.path) for r in runs]
        self.marks = [m for m in self.marks if m in paths]
        rows = [(run.run_id, f"{run.requests - run.errors}/{run.errors}", self.fmt_number(run.output_tokens_per_s, 0),
                 self.fmt_number(run.ttft_p50_ms, 2), self.fmt_number(run.itl_p50_ms, 2),
                 ", ".join(short_model(m).removesuffix("_rate") for m in run.models)) for run in runs]
        # Widths from the data, set with the columns (as the Models pane does: auto width lags
        # behind a clear and refill done in one go).
        table.clear(columns=True)
        for index, (label, key) in enumerate(RUN_COLUMNS):
            width = max([len(label), *(len(row[index - 1]) for row in rows)]) if index else 1
            table.add_column(label, key=key, width=width)
        for run, row in zip(runs, rows, strict=True):
            ok_err = Content.styled(row[1], "$error") if run.errors else Content(row[1])
            table.add_row(self.mark_cell(str(run.path)), row[0], ok_err, *row[2:], key=str(run.path))
        wanted = self._select_after_refresh or current
        self._select_after_refresh = None
        if wanted in paths:
            table.move_cursor(row=paths.index(wanted))
        where = self.display_path(self.bench_dir)
        hint = (f"{len(runs)} runs in {where}; TTFT and ITL: p50 in ms. Enter opens a run · space marks A, "
                "then B · c compares."
                if runs else f"No saved runs in {where} yet: the runs of this pane and of `abi bench` are saved there.")
        self.query_one("#bench-runs-hint", Static).update(hint)

    @staticmethod
    def fmt_number(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    def mark_cell(self, path: str) -> Content:
        if path not in self.marks:
            return Content("")
        return Content.styled("AB"[self.marks.index(path)], "bold $accent")

    def selected_run(self) -> str | None:
        table = self.query_one("#bench-runs-table", DataTable)
        if not table.row_count:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except Exception:  # the cursor sits past the rows after a clear
            return None
        return str(key.value) if key.value is not None else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "bench-runs-table" and event.row_key.value:
            self.open_run(str(event.row_key.value))

    @work(exclusive=True, group="bench-open")
    async def open_run(self, path: str) -> None:
        from abi_tui.bench import load_run

        try:
            result = await asyncio.to_thread(load_run, path)
        except (ValueError, KeyError, TypeError) as exc:
            self.notify(str(exc), title="Cannot open the run", severity="error")
            return
        self.show_result(result)

    def action_mark(self) -> None:
        path = self.selected_run()
        if path is None:
            self.notify("no run to mark: run a benchmark first", severity="warning")
            return
        if path in self.marks:
            self.marks.remove(path)
        else:
            self.marks = [*self.marks, path][-2:]
        table = self.query_one("#bench-runs-table", DataTable)
        for run in self.runs:
            table.update_cell(str(run.path), "mark", self.mark_cell(str(run.path)))

    # -- comparison ---------------------------------------------------------------------------
    def action_compare(self) -> None:
        """A = the first run marked, B = the second one (or the highlighted run)."""
        pair = list(self.marks)
        highlighted = self.selected_run()
        if len(pair) == 1 and highlighted and highlighted != pair[0] and self.view == "runs":
            pair.append(highlighted)
        if len(pair) != 2:
            self.notify("Mark two runs with space in Runs (A, then B), then press c", title="Compare",
                        severity="warning")
            self.show_view("runs")
            return
        self.compare_runs(pair[0], pair[1])

    @work(exclusive=True, group="bench-compare")
    async def compare_runs(self, path_a: str, path_b: str) -> None:
        from abi_tui.bench import compare, load_run

        def load() -> tuple[BenchResult, BenchResult, list[MetricDelta]]:
            a, b = load_run(path_a), load_run(path_b)
            return a, b, compare(a, b)

        try:
            a, b, deltas = await asyncio.to_thread(load)
        except (ValueError, KeyError, TypeError) as exc:
            self.notify(str(exc), title="Cannot compare", severity="error")
            return
        self.render_compare(a, b, deltas)
        self.show_view("compare")

    def render_compare(self, a: BenchResult | None, b: BenchResult | None, deltas: list[MetricDelta] | None) -> None:
        head = self.query_one("#bench-compare-head", Static)
        table = self.query_one("#bench-compare-table", DataTable)
        table.clear(columns=True)
        self.comparison = deltas
        if a is None or b is None or deltas is None:
            head.update("No comparison yet. In Runs, mark two runs with space (A, then B) and press c.")
            return

        def line(mark: str, run: BenchResult) -> Content:
            load = run.scenarios[0].load.describe() if run.scenarios else "-"
            return Content.assemble((f"{mark}  ", "bold $accent"), (run.run_id, "bold"),
                                    f"  {run.config.get('preset') or 'custom'} · {load} · {run.target.get('transport')}")

        legend = Content.assemble("Δ = B − A, B/A the ratio; ", ("green", "$success"), ": B is better, ",
                                  ("red", "$error"), ": B is worse (lower is better for latencies and errors).")
        head.update(Content("\n").join([line("A", a), line("B", b), legend]))
        if not deltas:
            table.add_column("")
            table.add_row("The runs have no scenario in common (scenarios match by name).")
            return
        rows = []
        for d in deltas:
            name, digits = METRIC_LABELS.get(d.metric, (d.metric, 2))
            verdict = "better" if d.better == "b" else "worse" if d.better == "a" else ("same" if d.delta == 0 else "")
            rows.append((short_model(d.scenario), name, self.fmt_number(d.a, digits), self.fmt_number(d.b, digits),
                         "-" if d.delta is None else f"{d.delta:+,.{digits}f}",
                         "-" if d.ratio is None else f"{d.ratio:.2f}x", verdict))
        for index, label in enumerate(COMPARE_COLUMNS):
            table.add_column(label, key=label or "verdict", width=max([len(label), *(len(r[index]) for r in rows)]))
        for d, row in zip(deltas, rows, strict=True):
            tone = "$success" if d.better == "b" else "$error" if d.better == "a" else ""
            table.add_row(*row[:3], *(Content.styled(text, tone) if tone else Content(text) for text in row[3:]))
