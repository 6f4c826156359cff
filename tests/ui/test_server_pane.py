"""The Server pane's Requests log, against a real server, with requests made through the API.

It once stayed empty after 11 requests: the pane's first read of /metrics only took a baseline,
so every request made before the pane was first shown was never logged."""

from __future__ import annotations

import aiohttp
from textual.widgets import RichLog

from .conftest import SIZE, wait_for

BODY = {"model": "mock/constant_rate?min_ms=1&max_ms=1", "max_tokens": 2,
        "messages": [{"role": "user", "content": "hi"}]}


def request_lines(app) -> list[str]:
    log = app.pane("server").query_one("#request-log", RichLog)
    return ["".join(segment.text for segment in strip) for strip in log.lines]


async def send(url: str, count: int, path: str = "/v1/chat/completions", body: dict | None = None) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.post(url + path, json=body or BODY) as response:
                await response.read()


async def test_requests_log_shows_requests_made_before_and_after_the_pane_opened(ui_server, make_app):
    server = ui_server()
    app = make_app(server)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.link.connected and app.link.health is not None, what="connection")
        await send(server.url, 11)  # before the Server pane was ever shown
        await pilot.press("5")
        await wait_for(pilot, lambda: any(line.endswith("200 /v1/chat/completions  ×11") for line in request_lines(app)),
                       what="the 11 requests in the log")
        await send(server.url, 2)
        await send(server.url, 1, body={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
        await wait_for(pilot, lambda: any(line.endswith("200 /v1/chat/completions  ×2") for line in request_lines(app))
                       and any(line.endswith("404 /v1/chat/completions") for line in request_lines(app)),
                       what="the later requests, by status")
        logged = request_lines(app)[1:]  # under the pane's own first line
        assert not any(line.endswith(("/health", "/metrics", "/api/telemetry")) for line in logged)
