"""Faults (issue 11): clients that vanish at random points, readers that never drain, a backend
that raises mid-stream, and a producer far ahead of its consumer. After each the server holds
no stream, no slot and no queue place, and the next request is served."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time

import aiohttp
import psutil
import pytest

from abi_tui.backends import base
from abi_tui.server.sse import parse_sse

from .clients import JSON, abi_sse, openai_sse, websocket
from .conftest import knob

pytestmark = pytest.mark.reliability

DISCONNECTS = knob("disconnects", 90)
SLOW_READERS = knob("slow_readers", 12)
FAST = "mock/constant_rate?min_ms=0&max_ms=0"
TICKING = "mock/constant_rate?min_ms=5&max_ms=5"


async def idle(state, timeout: float = 10.0) -> bool:
    """True once the engine has no stream, no active slot and nobody queued."""
    engine = state.engine
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not engine.streams and engine.active_streams == 0 and engine.queued == 0:
            return True
        await asyncio.sleep(0.02)
    return False


# ----------------------------------------------------------------------------- disconnects
async def _disconnect_once(url: str, rng: random.Random) -> str:
    """One client that goes away at a random point of a random transport; returns what it did."""
    transport = rng.choice(["abi", "openai", "openai-blocking", "ws"])
    point = rng.choice(["before-headers", "after-tokens", "mid-read"])
    tokens = rng.randint(1, 30)
    body = {"model": TICKING, "prompt": "a b c", "max_tokens": 400}
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=0)) as session:
        if transport == "ws":
            ws = await session.ws_connect("/api/stream/ws")
            await ws.send_str(json.dumps({"type": "request", **body}))
            if point != "before-headers":
                seen = 0
                while seen < tokens:
                    message = json.loads(await ws.receive_str(timeout=30))
                    seen += message["type"] == "token"
            await ws.close() if point == "after-tokens" else ws._response.connection.transport.abort()
            return f"{transport}/{point}"
        path = "/api/stream" if transport == "abi" else "/v1/completions"
        if transport.startswith("openai"):
            body["stream"] = transport == "openai"
        request = asyncio.create_task(session.post(path, data=json.dumps(body), headers=JSON))
        if point == "before-headers" or transport == "openai-blocking":
            await asyncio.sleep(rng.uniform(0, 0.05))
            request.cancel()  # the client gives up while the server works
            try:
                await request
            except asyncio.CancelledError:
                pass
            else:
                request.result().close()
            return f"{transport}/{point}"
        response = await request
        seen = 0
        async for line in response.content:
            if line.startswith(b"data: {") and (b'"text"' in line or b'"content"' in line):
                seen += 1
                if seen >= tokens:
                    break
        if point == "mid-read":
            response.connection.transport.abort()  # a reset rather than a clean close
        response.close()
        return f"{transport}/{point}"


async def test_clients_that_disconnect_at_random_points_leave_nothing_behind(app_server, figures):
    # Few slots so part of the clients disconnect while they wait in the queue.
    server = await app_server(max_streams=8, max_queue=512)
    rng = random.Random(11)
    kinds: dict[str, int] = {}
    batch = 30
    for start in range(0, DISCONNECTS, batch):
        done = await asyncio.gather(*[_disconnect_once(server.url, rng)
                                      for _ in range(min(batch, DISCONNECTS - start))])
        for kind in done:
            kinds[kind] = kinds.get(kind, 0) + 1
    survived = await idle(server.state)
    async with aiohttp.ClientSession(server.url) as session:
        assert await abi_sse(session, TICKING, 5) == 5
        assert await openai_sse(session, TICKING, 5) == 5
        assert await websocket(session, TICKING, 5) == 5
    figures.set(faults_injected=DISCONNECTS, faults_survived=DISCONNECTS if survived else 0, kinds=kinds)
    assert survived, f"left behind: {len(server.state.engine.streams)} streams, " \
                     f"{server.state.engine.active_streams} active, {server.state.engine.queued} queued"


# ----------------------------------------------------------------------------- slow readers
def stalled_socket(port: int, path: str, body: dict | None = None, websocket_upgrade: bool = False) -> socket.socket:
    """A client that sends its request and then never reads: a tiny receive window, so the
    server's writes back up after a few kilobytes."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", port))
    if websocket_upgrade:
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        payload = json.dumps({"type": "request", **body}).encode()
        header = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + b"\0\0\0\0"  # masked, key 0
        sock.sendall(header + payload)
    else:
        data = json.dumps(body).encode()
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


async def start_up_done(server, timeout: float = 60.0) -> None:
    """What the server loads in the background at start-up (the vector store's client, the
    sentence encoder memory embeds with) is not what the stalled streams cost: wait for it."""
    from abi_tui.memory.embedder import packaged_encoder

    service = server.state.services["personas"]
    await asyncio.to_thread(packaged_encoder)  # the one the server loads (cached), or None
    deadline = time.monotonic() + timeout
    while (service._client is None or service.memory is None or service.memory_state == "opening"
           ) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def test_readers_that_never_drain_are_dropped_with_bounded_memory(app_server, figures):
    server = await app_server(write_timeout_s=1.0)
    port = int(server.url.rsplit(":", 1)[1])
    engine = server.state.engine
    body = {"model": FAST, "prompt": "x " * 40, "max_tokens": 131000}
    await start_up_done(server)
    process = psutil.Process()
    before = process.memory_info().rss
    sockets = []
    for i in range(SLOW_READERS):
        kind = i % 3
        if kind == 2:
            sockets.append(stalled_socket(port, "/api/stream/ws", body, websocket_upgrade=True))
        else:
            path = "/api/stream" if kind == 0 else "/v1/completions"
            sockets.append(stalled_socket(port, path, {**body, "stream": True}))
    peak_backlog = peak_rss = 0
    health_ms = []
    started = time.monotonic()
    async with aiohttp.ClientSession(server.url) as session:
        # Each socket first absorbs what the kernel buffers (up to tcp_wmem's 4 MiB here) before a
        # write blocks; the timeout counts from then.
        while time.monotonic() - started < 60:
            peak_backlog = max([peak_backlog, *(s.channel.backlog for s in engine.streams)])
            peak_rss = max(peak_rss, process.memory_info().rss)
            t = time.perf_counter()
            async with session.get("/health") as response:
                assert response.status == 200
            health_ms.append((time.perf_counter() - t) * 1000)
            if time.monotonic() - started > 1 and not engine.streams:
                break
            await asyncio.sleep(0.1)
    dropped_after = time.monotonic() - started
    for sock in sockets:
        sock.close()
    survived = await idle(server.state, 5)
    figures.set(slow_readers=SLOW_READERS, dropped_after_s=round(dropped_after, 1), peak_backlog=peak_backlog,
                backlog_limit=base.PENDING_HIGH_WATER, rss_growth_mb=round((peak_rss - before) / 2**20, 1),
                health_p_max_ms=round(max(health_ms), 1), faults_injected=SLOW_READERS,
                faults_survived=SLOW_READERS if survived else 0)
    assert survived and not engine.streams, "stalled streams were not dropped"
    assert peak_backlog <= base.PENDING_HIGH_WATER  # backpressure: the mock waited
    assert peak_rss - before < 64 * 2**20
    assert max(health_ms) < 1000  # the loop kept serving meanwhile
    async with aiohttp.ClientSession(server.url) as session:
        assert await abi_sse(session, TICKING, 5) == 5


async def test_a_reader_that_stalls_then_reads_gets_the_error_event(app_server, monkeypatch, figures):
    from abi_tui.server import streaming

    monkeypatch.setattr(streaming, "DROP_GRACE_S", 8.0)
    server = await app_server(write_timeout_s=1.0)
    port = int(server.url.rsplit(":", 1)[1])
    sock = stalled_socket(port, "/api/stream", {"model": FAST, "prompt": "y " * 40, "max_tokens": 131000})
    await asyncio.sleep(3.0)  # past the write timeout, inside the grace
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    received = bytearray()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 5)
        except TimeoutError:
            break
        if not chunk:
            break
        received += chunk
    sock.close()
    text = received.decode("utf-8", "replace")
    errors = [json.loads(e["data"]) for e in parse_sse(text.split("\r\n\r\n", 1)[1]) if e.get("event") == "abi.error"]
    figures.set(bytes_before_drop=len(received), faults_injected=1, faults_survived=int(bool(errors)))
    assert errors and errors[-1]["code"] == "client_too_slow", text[-500:]
    assert await idle(server.state)


def test_a_decode_thread_far_ahead_of_its_consumer_is_stopped(figures):
    """A producer that cannot wait (llama.cpp's decode thread) and a consumer that does not
    drain: the channel keeps at most `limit` pieces and the stream ends with ClientTooSlow."""
    from abi_tui.backends.base import CancelFlag, ClientTooSlow, TokenChannel

    async def main() -> None:
        loop = asyncio.get_running_loop()
        channel = TokenChannel(loop, limit=64)
        cancel = CancelFlag()
        channel.on_overflow = cancel.set

        def decode() -> None:  # like LlamaBackend: put until the cancel flag is seen
            for _ in range(10_000):
                if cancel.is_set:
                    channel.close("cancelled")
                    return
                channel.put("tok")
            channel.close("length")

        thread = threading.Thread(target=decode)
        thread.start()
        await asyncio.to_thread(thread.join)
        await asyncio.sleep(0.05)
        assert channel.backlog <= 64
        assert isinstance(channel.error, ClientTooSlow) and channel.finish_reason is None
        assert len(channel.drain()) == 64
        figures.set(faults_injected=1, faults_survived=1, pieces_kept=64)

    asyncio.run(main())


# ----------------------------------------------------------------------------- backend raises
async def test_a_backend_that_raises_mid_stream(app_server, tiny_model, monkeypatch, figures):
    """On every transport: an error event (and [DONE] on OpenAI streams), and the next request is
    served. Once with llama.cpp failing in its decode thread, once with the mock failing."""
    import abi_tui.backends.mock as mock

    server = await app_server(model=str(tiny_model), threads=1, n_ctx=512)
    backend = server.state.engine.active_backend()
    original = backend._emit
    calls = {"n": 0}

    def failing_emit(seq, token):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise RuntimeError("injected decode failure")
        return original(seq, token)

    real_delay = mock.token_delay_ms

    def failing_delay(pattern, index, *args):
        if index == 3:
            raise RuntimeError("injected mock failure")
        return real_delay(pattern, index, *args)

    faults = 0
    async with aiohttp.ClientSession(server.url) as session:
        for model in (None, "mock/constant_rate"):
            if model is None:
                backend._emit = failing_emit
            else:
                backend._emit = original
                monkeypatch.setattr(mock, "token_delay_ms", failing_delay)
            body = {"prompt": "abc", "max_tokens": 20, "temperature": 0, **({"model": model} if model else {})}
            calls["n"] = 0
            async with session.post("/api/stream", data=json.dumps(body), headers=JSON) as response:
                events = [e for e in parse_sse(await response.text()) if "comment" not in e]
            assert events[-1]["event"] == "abi.error", events[-2:]
            assert json.loads(events[-1]["data"])["code"] == "generation_failed"
            calls["n"] = 0
            chat = {"messages": [{"role": "user", "content": "abc"}], "max_tokens": 20, "stream": True,
                    **({"model": model} if model else {})}
            async with session.post("/v1/chat/completions", data=json.dumps(chat), headers=JSON) as response:
                frames = [f for f in (await response.text()).split("\n\n") if f.strip()]
            assert frames[-1] == "data: [DONE]"
            assert json.loads(frames[-2].removeprefix("data: "))["error"]["code"] == "generation_failed"
            calls["n"] = 0
            async with session.ws_connect("/api/stream/ws") as ws:
                await ws.send_str(json.dumps({"type": "request", "request_id": "x", **body}))
                while True:
                    message = json.loads(await ws.receive_str(timeout=30))
                    if message["type"] in ("end", "error"):
                        break
                assert message["type"] == "error" and message["code"] == "generation_failed"
                # the connection stays usable
                monkeypatch.setattr(mock, "token_delay_ms", real_delay)
                backend._emit = original
                await ws.send_str(json.dumps({"type": "request", "request_id": "y", **body, "max_tokens": 3}))
                while (message := json.loads(await ws.receive_str(timeout=30)))["type"] not in ("end", "error"):
                    pass
                assert message["type"] == "end"
            faults += 3
            assert await idle(server.state)
            async with session.post("/v1/completions", data=json.dumps({**body, "max_tokens": 4}),
                                    headers=JSON) as response:
                assert response.status == 200
                assert (await response.json())["usage"]["completion_tokens"] == 4
    figures.set(faults_injected=faults, faults_survived=faults)
