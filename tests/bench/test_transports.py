"""The harness against a foreign OpenAI-compatible server (a fake one on loopback, CRLF SSE as
sse-starlette servers send), and the SSE parser."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from aiohttp import web

from abi_tui.bench.embedded import BenchError
from abi_tui.bench.loadgen import LoadSpec
from abi_tui.bench.records import RequestRecord, RequestSpec
from abi_tui.bench.runner import BenchConfig, run_benchmark
from abi_tui.bench.transports import SseTransport, make_session, ws_url
from abi_tui.net.sse import SseDecoder


def test_sse_parser_handles_crlf_split_chunks_and_comments() -> None:
    parser = SseDecoder()
    stream = b": ping\r\n\r\nevent: abi.token\r\ndata: {\"text\":\"a\"}\r\n\r\ndata: line1\ndata: line2\n\ndata: [DONE]\r\n\r\n"
    events = []
    for i in range(0, len(stream), 7):  # 7-byte reads split lines and CRLF pairs
        events += [(e.type, e.data) for e in parser.feed(stream[i:i + 7])]
    assert events == [("abi.token", '{"text":"a"}'), ("message", "line1\nline2"), ("message", "[DONE]")]


def test_ws_url() -> None:
    assert ws_url("http://127.0.0.1:8420/") == "ws://127.0.0.1:8420/api/stream/ws"
    assert ws_url("https://host/abi") == "wss://host/abi/api/stream/ws"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chunk(text: str | None, finish: str | None = None) -> bytes:
    delta = {"content": text} if text is not None else {}
    body = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\r\n\r\n"


@pytest.fixture
async def foreign_server():
    """llama-server-like: no /health JSON of abi's shape, chat streams in CRLF, no usage chunk."""
    seen: list[dict] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(body)
        if body.get("model") not in ("fake-model", None):
            return web.json_response({"error": {"message": "model not found", "code": "model_not_found"}},
                                     status=404)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_chunk(""))  # role chunk: no content, not a token
        for i in range(body["max_tokens"]):
            await asyncio.sleep(0.002)
            if body.get("messages", [{}])[-1].get("content") == "break" and i == 2:
                await response.write(b'data: {"error": {"message": "decode failed", "code": "internal"}}\r\n\r\n')
                break
            await response.write(_chunk(f" t{i}"))
        else:
            await response.write(_chunk(None, "length"))
        await response.write(b"data: [DONE]\r\n\r\n")
        await response.write_eof()
        return response

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_foreign_server_measured_with_the_same_harness(foreign_server) -> None:
    url, seen = foreign_server
    samples = []
    result = await run_benchmark(BenchConfig(url=url, requests=6, max_tokens=5, warmup=1,
                                             load=LoadSpec("concurrency", 2), measure_encoding=False),
                                 on_progress=samples.append)
    assert result.target["server"] == "openai-compatible"
    assert result.target["route"] == "chat" and result.target["endpoint"] == "/v1/chat/completions"
    (scenario,) = result.scenarios
    assert scenario.model == "fake-model"  # from /v1/models
    summary = scenario.summary
    assert summary["requests"]["completed"] == 6 and summary["output_tokens"] == 30
    assert summary["itl_ms"]["count"] == 6 * 4
    assert summary["server"]["available"] is False
    assert summary["pipeline_overhead"]["available"] is False
    assert "stream_options" not in seen[-1]  # unknown to many servers; only sent to abi
    assert all(r.finish_reason == "length" for r in scenario.records)
    # Progress: a phase event, then one per request, warm-up included.
    assert [s.event for s in samples].count("request") == 7
    measured = [s for s in samples if s.event == "request" and s.phase == "measure"]
    assert measured[-1].done == 6 and measured[-1].ttft_ms is not None and len(measured[-1].itl) == 4


async def test_unknown_model_fails_in_warmup_with_the_servers_reason(foreign_server) -> None:
    url, _ = foreign_server
    with pytest.raises(BenchError, match="404 model_not_found: model not found"):
        await run_benchmark(BenchConfig(url=url, model="nope", requests=2, measure_encoding=False))


async def test_error_event_mid_stream_is_an_error(foreign_server) -> None:
    url, _ = foreign_server
    async with make_session(10) as streams:
        transport = SseTransport(url, "chat", streams)
        record = RequestRecord(index=0, max_tokens=5)
        await transport.send(RequestSpec(0, "fake-model", "break", 5), record)
    assert record.error == "stream: internal: decode failed"
    assert len(record.token_times) == 2 and not record.ok


async def test_unreachable_url_is_a_bench_error() -> None:
    with pytest.raises(BenchError, match="cannot reach"):
        await run_benchmark(BenchConfig(url=f"http://127.0.0.1:{_free_port()}", requests=1))
