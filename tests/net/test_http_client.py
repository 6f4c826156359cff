"""The streaming HTTP layer sends a request again, once, on a fresh connection when the kept-alive
connection it went out on had been closed by the server; nothing else is retried."""

from __future__ import annotations

import aiohttp
import pytest
from fakes.closing_server import ClosingServer

from abi_tui.bench.records import RequestRecord, RequestSpec
from abi_tui.bench.runner import BenchConfig, run_benchmark
from abi_tui.bench.transports import SseTransport, make_session
from abi_tui.net.http_client import HttpStreams
from abi_tui.net.sse import SseDecoder

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def stream_tokens(streams: HttpStreams, url: str) -> list[str]:
    async with await streams.open("POST", url + "/v1/chat/completions", json=BODY) as response:
        decoder = SseDecoder()
        events = [e for chunk in [await response.read()] for e in decoder.feed(chunk)]
    return [e.data for e in events]


@pytest.fixture
async def closing():
    servers: list[ClosingServer] = []

    async def start(mode: str) -> ClosingServer:
        server = await ClosingServer(mode=mode).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def test_a_request_on_a_stale_connection_is_sent_again_on_a_fresh_one(closing):
    server = await closing("second_request")
    async with HttpStreams() as streams:
        for _ in range(6):
            assert (await stream_tokens(streams, server.url))[-1] == "[DONE]"
    # Every reuse found the connection closed under it; each was sent once more, and answered.
    assert server.answered == 6 and server.dropped == streams.stale_retries >= 2


async def test_without_the_retry_the_same_server_fails_requests(closing):
    server = await closing("second_request")
    failures = 0
    async with aiohttp.ClientSession() as session:  # what the bench used before
        for _ in range(6):
            try:
                async with session.post(server.url + "/v1/chat/completions", json=BODY) as response:
                    await response.read()
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                failures += 1
    assert failures >= 2


async def test_a_fresh_connection_that_closes_is_not_retried(closing):
    server = await closing("first_request")
    async with HttpStreams() as streams:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await streams.open("POST", server.url + "/v1/chat/completions", json=BODY)
    assert server.requests == 1 and streams.stale_retries == 0


async def test_a_refused_connection_is_not_retried():
    async with HttpStreams() as streams:
        with pytest.raises(aiohttp.ClientConnectorError):
            await streams.open("POST", "http://127.0.0.1:9/v1/chat/completions", json=BODY)
        assert streams.stale_retries == 0


@pytest.mark.parametrize("mode", ["after_response", "second_request"])
async def test_bench_completes_every_request_against_a_server_that_closes_kept_alive_connections(closing, mode):
    server = await closing(mode)
    result = await run_benchmark(BenchConfig(url=server.url, model="fake-model", requests=12, max_tokens=4,
                                             measure_encoding=False))
    records = [r for scenario in result.scenarios for r in scenario.records]
    assert len(records) == 12 and [r.error for r in records if r.error] == []
    assert all(len(r.token_times) == 4 for r in records)


async def test_the_bench_transport_records_no_error_after_a_stale_connection(closing):
    server = await closing("second_request")
    async with make_session(10) as streams:
        transport = SseTransport(server.url, "chat", streams)
        records = [RequestRecord(index=i, max_tokens=4) for i in range(4)]
        for i, record in enumerate(records):
            await transport.send(RequestSpec(i, "fake-model", "hi", 4), record)
    assert [r.error for r in records] == [None] * 4 and streams.stale_retries >= 1
