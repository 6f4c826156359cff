"""Server pane: address, auth mode, model, pool, active and queued streams,
counters, request log and event log.

The server has no route for its request log, so the log here is built from /metrics: each
poll adds a line per route and status whose `abi_requests_total` grew (count since the last
poll; the first poll, and the first after a server restart, count from the server's start). The
dashboard's own polling routes are left out.
"""

from __future__ import annotations

import time
from contextlib import suppress
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.css.query import NoMatches
from textual.timer import Timer
from textual.widgets import RichLog, Static

from abi_tui.client import CONNECTION_LOST, CONNECTION_OPEN, ClientError, ServerEvent
from abi_tui.connection import LinkStatus
from abi_tui.formatting import human_bytes, human_ctx
from abi_tui.panes.base import Pane

POLL_S = 2.0
# What the dashboard itself asks for every few seconds: noise in a request log.
POLLED_ROUTES = frozenset({"/health", "/metrics", "/api/events", "/api/telemetry"})
GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions", "/api/stream", "/api/stream/ws",
                     "/api/v1/chat", "/api/v1/chat/{persona}")


def summarize(event: ServerEvent, fmt: Any) -> str:
    """One readable line for an event in the log."""
    d = event.data
    kind = event.type
    model = d.get("model")
    if kind == "model.loading":
        return f"loading {model}"
    if kind == "model.ready":
        return f"{model} ready in {fmt.ms(d.get('load_ms'))}, {human_bytes(sum((d.get('bytes') or {}).values()))}"
    if kind == "model.failed":
        return f"{model} failed: {d.get('error')}"
    if kind == "model.unloaded":
        return f"{model} unloaded ({d.get('reason')})"
    if kind == "pool.changed":
        names = ", ".join(m.get("model", "?") for m in d.get("models") or []) or "empty"
        return f"pool: {names} · {human_bytes(d.get('used_bytes'))} of {human_bytes(d.get('budget_bytes'))}"
    if kind == "reload.started":
        return f"swap {d.get('previous_model') or 'none'} → {model}"
    if kind == "reload.draining":
        return f"draining {d.get('streams')} streams (up to {d.get('timeout_s')} s)"
    if kind == "reload.drained":
        return f"drained {d.get('drained')}, cancelled {d.get('cancelled')}"
    if kind == "reload.loading":
        return f"loading {model}"
    if kind == "reload.done":
        return f"now serving {model} (was {d.get('previous_model') or 'none'})"
    if kind == "reload.failed":
        back = f"; rolled back to {d['rolled_back_to']}" if d.get("rolled_back_to") else ""
        return f"{model} failed at {d.get('stage')}: {d.get('error')}{back}"
    if kind == "reload.rolled_back":
        return f"rolled back to {model}"
    if kind == "model.removed":
        return f"removed {d.get('removed')} ({human_bytes(d.get('size'))})"
    if kind == "model.download":
        done = human_bytes(d.get("downloaded"))
        total = human_bytes(d.get("total")) if d.get("total") else "?"
        return f"{d.get('name') or d.get('spec')}: {d.get('state')} {done}/{total}"
    if kind == CONNECTION_OPEN:
        return "connected"
    if kind == CONNECTION_LOST:
        return f"connection lost: {d.get('error')}"
    text = ", ".join(f"{k}={v}" for k, v in list(d.items())[:4])
    return text[:100]


class ServerPane(Pane):
    PANE_ID = "server"
    TITLE = "Server"
    BINDINGS = [
        Binding("ctrl+r", "refresh", "Refresh", id="server-refresh"),
        Binding("e", "clear_events", "Clear event log", id="server-clear-events"),
    ]
    COMMANDS = (
        ("Server: refresh", "Read pool, counters and requests again", "refresh"),
        ("Server: clear the event log", "Empty the event log", "clear_events"),
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool: dict[str, Any] = {}
        self.counters: dict[tuple[str, str], float] | None = None
        self.totals: dict[str, float] = {}
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="server-top"):
            yield Static("", id="server-info")
            yield Static("", id="server-pool")
        with Horizontal(id="server-logs"):
            with Vertical(id="request-log-box") as requests:
                requests.border_title = "Requests"
                yield RichLog(id="request-log", max_lines=500, min_width=20, wrap=True, markup=False)
            with Vertical(id="event-log-box") as events:
                events.border_title = "Events"
                yield RichLog(id="event-log", max_lines=500, min_width=20, wrap=True, markup=False)

    def on_mount(self) -> None:
        self.query_one("#request-log", RichLog).write(
            Text("Requests by route and status, read from /metrics.", style="dim"))
        self.query_one("#server-info").border_title = "Server"
        self.query_one("#server-pool").border_title = "Model pool"
        self.render_info(self.link)
        self.render_pool()

    # -- hooks --------------------------------------------------------------------------------
    def server_status(self, status: LinkStatus) -> None:
        self.render_info(status)

    def server_event(self, event: ServerEvent) -> None:
        if event.type == "telemetry.sample":
            pool = event.data.get("pool")
            if isinstance(pool, dict) and pool != self.pool:
                self.pool = pool
                self.render_pool()
            return
        if event.type == "pool.changed":
            self.pool = {**self.pool, **event.data}
            self.render_pool()
        self.log_event(event)

    def pane_shown(self) -> None:
        self.poll()
        if self._timer is None:
            self._timer = self.set_interval(POLL_S, self.poll_if_shown)

    def poll_if_shown(self) -> None:
        if self.abi.active_pane == self.PANE_ID:
            self.poll()

    def action_refresh(self) -> None:
        self.poll()

    def action_clear_events(self) -> None:
        self.query_one("#event-log", RichLog).clear()

    # -- data ---------------------------------------------------------------------------------
    @work(exclusive=True, group="server-poll")
    async def poll(self) -> None:
        if self.client is None or not self.link.connected:
            return
        try:
            telemetry = await self.client.telemetry()
            samples = await self.client.metrics()
        except ClientError:
            return  # the header already says the server is down
        pool = (telemetry.get("latest") or {}).get("pool")
        with suppress(NoMatches):  # the app may be closing under this worker
            if isinstance(pool, dict):
                self.pool = pool
                self.render_pool()
            self.update_counters(samples)

    def update_counters(self, samples: dict[str, list[tuple[dict[str, str], float]]]) -> None:
        requests = {(labels.get("route", "?"), labels.get("status", "?")): value
                    for labels, value in samples.get("abi_requests_total", [])}
        if self.counters is not None and any(v < self.counters.get(k, 0) for k, v in requests.items()):
            self.counters = None  # counters went back: a restarted server
        # The first read (and the first after a restart) logs everything the server counted since
        # it started: requests made before the pane was first shown belong in the log too.
        before = self.counters or {}
        for (route, status), value in sorted(requests.items()):
            grown = value - before.get((route, status), 0)
            if grown > 0 and route not in POLLED_ROUTES:
                self.log_request(route, status, int(grown))
        self.counters = requests

        def total(name: str) -> float:
            return sum(value for _, value in samples.get(name, []))

        def failed(status: str) -> bool:
            # 499: the client hung up (a cancelled stream, a closed dashboard), not a failure.
            return not status.isdigit() or (int(status) >= 400 and int(status) != 499)

        def only(values: dict[tuple[str, str], float], good: bool) -> float:
            return sum(v for (route, status), v in values.items() if route not in POLLED_ROUTES and failed(status) != good)

        self.totals = {
            "requests": only(requests, True) + only(requests, False),
            "errors": only(requests, False),
            "generations": sum(v for (route, _), v in requests.items() if route in GENERATION_ROUTES),
            "prompt": total("abi_prompt_tokens_total"),
            "generated": total("abi_generated_tokens_total"),
            "ttft_sum": total("abi_ttft_seconds_sum"),
            "ttft_count": total("abi_ttft_seconds_count"),
        }
        self.render_counters()

    # -- rendering ----------------------------------------------------------------------------
    def render_info(self, status: LinkStatus) -> None:
        if not self.is_mounted:
            return
        h = status.health
        muted = "$text-muted"

        def row(label: str, *value: str | tuple[str, str]) -> Content:
            return Content.assemble((f"{label:<10}", muted), *value)

        mode = "embedded" if status.embedded else "remote (--connect)"
        lines = [row("address", self.fmt.address(status.url) if status.url else "starting..."),
                 row("state", f"{status.state_label} · {mode}")]
        if h is None:
            if status.error:
                lines.append(row("error", (self.fmt.scrub(status.error, status.url), "$error")))
        else:
            lines += [
                row("version", f"{h.version} · up {self.fmt.uptime(h.uptime_s)} · auth {h.auth}"),
                row("model", h.model or "none (mock answers)"),
                row("context", f"{human_ctx(h.context_per_request)} × {h.parallel or '-'} sequences"),
                row("streams", f"{h.active_streams} active · {h.queued} queued"),
            ]
            if h.error:
                lines.append(row("error", (h.error, "$error")))
        t = self.totals
        if t:
            ttft = f"{t['ttft_sum'] / t['ttft_count'] * 1000:.0f} ms" if t.get("ttft_count") else "-"
            lines += [
                row("requests", f"{int(t['requests'])} · {int(t['errors'])} errors"),
                row("tokens", f"{int(t['prompt'])} in · {int(t['generated'])} out"),
                row("TTFT", f"{ttft} mean of {int(t['generations'])} generations"),
            ]
        self.query_one("#server-info", Static).update(Content("\n").join(lines))

    def render_pool(self) -> None:
        pool = self.pool
        widget = self.query_one("#server-pool", Static)
        if not pool:
            widget.update(Content.styled("no pool data yet", "$text-muted"))
            return
        muted = "$text-muted"

        def row(label: str, *value: str | tuple[str, str]) -> Content:
            return Content.assemble((f"{label:<10}", muted), *value)

        lines = [row("memory", f"{human_bytes(pool.get('used_bytes'))} of {human_bytes(pool.get('budget_bytes'))}")]
        if "loads" in pool:
            lines.append(row("loads", f"{pool.get('loads')} · hits {pool.get('hits')} · misses {pool.get('misses')}"))
            lines.append(row("evictions", f"{pool.get('evictions')} · failures {pool.get('load_failures', 0)}"))
        if pool.get("loading"):
            lines.append(row("loading", (", ".join(pool["loading"]), "$warning")))
        models = pool.get("models") or []
        for index, model in enumerate(models):
            kinds = model.get("bytes") or {}
            active = " ●" if model.get("pinned") else ""
            lines.append(row("resident" if index == 0 else "", (f"{model.get('model')}{active}", "bold"),
                             f"  {human_bytes(sum(kinds.values()))}"))
            lines.append(row("", (f"weights {human_bytes(kinds.get('weights'))} · kv {human_bytes(kinds.get('kv_cache'))}"
                                  f" · compute {human_bytes(kinds.get('compute'))}", muted)))
        if not models:
            lines.append(row("resident", "none"))
        widget.update(Content("\n").join(lines))

    def render_counters(self) -> None:
        self.render_info(self.link)

    def log_event(self, event: ServerEvent) -> None:
        if not self.is_mounted:
            return
        tone = "red" if event.type.endswith(("failed", "lost")) else ("green" if event.type.endswith(("ready", "done", "open")) else "")
        line = Text.assemble((self.fmt.clock(event.ts) + " ", "dim"), (f"{event.type:<17} ", tone or "bold"),
                             summarize(event, self.fmt))
        self.query_one("#event-log", RichLog).write(line)

    def log_request(self, route: str, status: str, count: int) -> None:
        tone = "red" if status.isdigit() and int(status) >= 400 else "green"
        line = Text.assemble((self.fmt.clock(time.time()) + " ", "dim"), (f"{status:>4} ", tone),
                             f"{route}", (f"  ×{count}" if count > 1 else "", "dim"))
        self.query_one("#request-log", RichLog).write(line)
