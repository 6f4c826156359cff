"""What a web page in the user's browser can make it send, refused (issue 15, docs/SECURITY.md).

The server runs as `abi dash` starts it by default: loopback, no token. Every request below is
one a page can make a browser send without the user noticing (a simple request needs no
preflight; a preflight is what the browser sends first otherwise; DNS rebinding makes the page's
own name point at 127.0.0.1). Each must be refused before it reaches a handler, and nothing may
be generated. The clients that are not a web page must keep working unchanged.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import aiohttp
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from abi_tui.client import AbiClient

from .clients import JSON

pytestmark = pytest.mark.reliability

MOCK = "mock/constant_rate?min_ms=1&max_ms=1"
EVIL = "http://evil.example"
CHAT = {"model": MOCK, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
# Every route that takes a body, with a body that would be accepted as JSON.
BODY_ROUTES = [
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/completions", {"model": MOCK, "prompt": "a b", "max_tokens": 2}),
    ("POST", "/v1/embeddings", {"input": "x"}),
    ("POST", "/api/stream", {"model": MOCK, "prompt": "a b", "max_tokens": 2}),
    ("POST", "/admin/reload", {"model": "no-such-model"}),
    ("POST", "/api/models/pull", {"model": "/no/such/file.gguf", "stream": False}),
    ("POST", "/api/v1/chat", {"content": "hi", "model": MOCK, "max_tokens": 2, "stream": False}),
    ("POST", "/api/v1/personas/route", {"content": "hi"}),
    ("POST", "/api/v1/conversations", {"title": "x"}),
    ("PATCH", "/api/v1/conversations/x", {"title": "x"}),
]
# The three content types a page may send cross-origin without a preflight, and a body with none
# (fetch() of a Blob without a type).
SIMPLE_TYPES = ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=abi", None]


def foreign_origins(port: int) -> list[str]:
    """Origins that are not this server's: other sites, look-alikes, another port, `null`."""
    return [EVIL, "https://evil.example", "null", f"http://evil.example:{port}", f"http://localhost.evil.example:{port}",
            f"http://127.0.0.1.nip.io:{port}", f"http://127.0.0.1:{port + 1}", "http://127.0.0.1",
            f"http://localhost:{port}.evil.example", f"http://evil.example#@127.0.0.1:{port}",
            f"file://127.0.0.1:{port}", f"http://user@127.0.0.1:{port}", "", "not an origin"]


def rebinding_hosts(port: int) -> list[str]:
    """Host headers a page on another name sends after rebinding that name to 127.0.0.1."""
    return [f"attacker.example:{port}", "attacker.example", f"localhost.attacker.example:{port}",
            f"127.0.0.1.nip.io:{port}", f"0x7f000001:{port}", f"127.1:{port}", f"[::ffff:127.0.0.1]:{port}",
            f"localhost:{port}@attacker.example", f"{'a' * 300}:{port}", ":", f"[::1:{port}"]


@pytest.fixture
async def server(app_server):
    """The default start, with every generation the engine is asked for recorded."""
    server = await app_server()
    engine = server.state.engine
    opened = []
    original = engine.open

    async def recording_open(request):
        opened.append(request)
        return await original(request)

    engine.open = recording_open
    server.opened = opened
    return server


def port_of(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def refused(response: aiohttp.ClientResponse, status: int, code: str | None = None) -> dict:
    body = await response.json(content_type=None)
    assert response.status == status, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["error"]["code"] == code, body
    assert "Access-Control-Allow-Origin" not in response.headers  # a page cannot read the answer
    return body


async def test_simple_requests_with_each_simple_content_type_are_refused(server, figures):
    tried = 0
    async with aiohttp.ClientSession(server.url) as session:
        for method, path, payload in BODY_ROUTES:
            before = len(server.opened)
            for ctype in SIMPLE_TYPES:
                for origin in (None, EVIL):
                    headers = {"Content-Type": ctype} if ctype else {}
                    if origin:
                        headers["Origin"] = origin
                    data = json.dumps(payload).encode()  # JSON text: what an attack would send
                    skip_auto = None if ctype else ["Content-Type"]
                    async with session.request(method, path, data=data, headers=headers,
                                               skip_auto_headers=skip_auto) as response:
                        tried += 1
                        if origin:
                            await refused(response, 403, "origin_not_allowed")
                        else:
                            await refused(response, 415, "unsupported_media_type")
            assert len(server.opened) == before, path  # nothing the refused requests asked for ran
            # Same route with application/json and no Origin: through the guard.
            async with session.request(method, path, json=payload) as response:
                assert response.status not in (403, 415), (path, await response.text())
                await response.read()
    assert tried == len(BODY_ROUTES) * len(SIMPLE_TYPES) * 2
    assert server.opened  # the control requests did reach the engine
    figures.set(hostile_inputs=tried)


async def test_the_content_type_is_refused_before_the_body_is_read(server):
    """A text/plain request that announces 1 MiB and sends none of it is answered at once."""
    port = port_of(server)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/plain\r\n"
                 "Content-Length: 1048000\r\n\r\n".encode())
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert b" 415 " in status_line


async def test_preflights_from_foreign_origins_are_refused(server, figures):
    port = port_of(server)
    tried = 0
    async with aiohttp.ClientSession(server.url) as session:
        for origin in foreign_origins(port):
            for _, path, _ in BODY_ROUTES[:6]:
                async with session.options(path, headers={
                        "Origin": origin, "Access-Control-Request-Method": "POST",
                        "Access-Control-Request-Headers": "content-type, authorization"}) as response:
                    tried += 1
                    await refused(response, 403, "origin_not_allowed")
                    assert not any(h.lower().startswith("access-control-") for h in response.headers)
            # The request itself (a page that ignores the preflight cannot send it anyway; a
            # GET needs none): refused for the same origin, and a GET's answer carries no CORS.
            async with session.get("/v1/models", headers={"Origin": origin}) as response:
                tried += 1
                await refused(response, 403, "origin_not_allowed")
            async with session.post("/v1/chat/completions", json=CHAT, headers={"Origin": origin}) as response:
                tried += 1
                await refused(response, 403, "origin_not_allowed")
    assert not server.opened
    figures.set(hostile_inputs=tried)


async def test_a_websocket_from_a_foreign_origin_is_refused(server, figures):
    port = port_of(server)
    ws_url = server.url.replace("http://", "ws://") + "/api/stream/ws"
    tried = 0
    for origin in foreign_origins(port):
        if origin in ("", "not an origin"):
            continue  # not a value websockets sends
        with pytest.raises(InvalidStatus) as caught:
            async with websockets.connect(ws_url, origin=origin):
                pass
        tried += 1
        assert caught.value.response.status_code == 403, origin
    async with aiohttp.ClientSession(server.url) as session:
        for path in ("/api/stream/ws", "/api/events"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
                await session.ws_connect(path, origin=EVIL)
            tried += 1
            assert refusal.value.status == 403
        async with session.get("/api/events", headers={"Origin": EVIL}) as response:  # the SSE form
            tried += 1
            await refused(response, 403)
    # Same origin and no origin: the socket works.
    for origin in (f"http://127.0.0.1:{port}", None):
        async with websockets.connect(ws_url, origin=origin) as ws:
            await ws.send(json.dumps({"type": "request", "prompt": "a b", "max_tokens": 2, "model": MOCK}))
            kinds = [json.loads(await ws.recv())["type"] for _ in range(4)]
            assert kinds == ["start", "token", "token", "end"]
    figures.set(hostile_inputs=tried)


async def test_dns_rebinding_hosts_are_refused(server, figures):
    """The page's origin and Host are its own name, consistently: only the Host check stops it."""
    port = port_of(server)
    tried = 0
    for host in rebinding_hosts(port):
        for method, path, payload in (("GET", "/v1/models", None), ("GET", "/health", None),
                                      ("POST", "/v1/chat/completions", CHAT), ("GET", "/api/stream/ws", None)):
            headers = {"Host": host, "Origin": f"http://{host}"}
            if payload is not None:
                headers.update(JSON)
            status_line, body = await raw_request(port, method, path, headers,
                                                  json.dumps(payload).encode() if payload else b"")
            tried += 1
            assert status_line.split()[1] in (b"400", b"403"), (host, path, status_line)
            assert b'"object"' not in body and b"choices" not in body
    assert not server.opened
    figures.set(hostile_inputs=tried)


async def raw_request(port: int, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[bytes, bytes]:
    """One HTTP/1.1 request with exactly these headers (clients rewrite Host)."""
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()),
             f"Content-Length: {len(body)}", "Connection: close"]
    if path.endswith("/ws"):
        lines += ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0], rest


# ----------------------------------------------------------------------------- still working
async def test_same_origin_and_loopback_hosts_are_served(server):
    port = port_of(server)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost", "127.0.0.1", "LOCALHOST"):
        status_line, body = await raw_request(port, "POST", "/v1/chat/completions",
                                              {"Host": host, "Origin": f"http://{host}", **JSON},
                                              json.dumps(CHAT).encode())
        assert b" 200 " in status_line, (host, status_line, body[:200])


async def test_non_browser_clients_work_unchanged(server):
    # aiohttp (no Origin), the dashboard's own client (HTTP, SSE and WebSocket), the openai SDK, curl.
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/v1/chat/completions", json=CHAT) as response:
            assert response.status == 200
            assert (await response.json())["choices"][0]["message"]["content"]
        async with session.post("/api/models/downloads/x/pause") as response:  # a POST without a body
            assert response.status == 404
    async with AbiClient(server.url) as client:
        assert (await client.health()).status
        assert await client.openai_models() is not None
        for transport in ("ws", "sse"):
            async with client.stream({"model": MOCK, "prompt": "a b", "max_tokens": 2}, transport=transport) as s:
                kinds = [event.type async for event in s]
            assert kinds == ["start", "token", "token", "end"], transport
        info = await client.create_conversation("kept")
        await client.rename_conversation(info.id, "renamed")
        await client.delete_conversation(info.id)
    openai = pytest.importorskip("openai")
    sdk = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)
    completion = await sdk.chat.completions.create(model=MOCK, messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=2)
    assert completion.choices[0].message.content
    chunks = [c async for c in await sdk.chat.completions.create(
        model=MOCK, messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True)]
    assert chunks
    await sdk.close()
    curl = shutil.which("curl")
    if curl:
        result = await asyncio.to_thread(subprocess.run, [
            curl, "-s", "-o", "-", "-w", "\n%{http_code}", "-H", "Content-Type: application/json",
            "-d", json.dumps(CHAT), server.url + "/v1/chat/completions"], capture_output=True, text=True, timeout=30)
        assert result.stdout.rstrip().endswith("200"), result.stdout
        # curl's default -d content type is a form: refused like a page's form post.
        result = await asyncio.to_thread(subprocess.run, [
            curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-d", json.dumps(CHAT),
            server.url + "/v1/chat/completions"], capture_output=True, text=True, timeout=30)
        assert result.stdout == "415"


async def test_configured_origins_and_hosts_get_cors_and_are_served(app_server):
    app_origin = "http://app.example:3000"
    server = await app_server(cors_origins=f"{app_origin}, https://other.example", allowed_hosts="abi.lan")
    port = port_of(server)
    async with aiohttp.ClientSession(server.url) as session:
        async with session.options("/v1/chat/completions", headers={
                "Origin": app_origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type"}) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == app_origin
            assert "POST" in response.headers["Access-Control-Allow-Methods"]
            assert {"authorization", "content-type"} <= {
                h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
            assert "Origin" in response.headers.getall("Vary")
        async with session.post("/v1/chat/completions", json=CHAT, headers={"Origin": app_origin}) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == app_origin
        # A stream's headers go out before its body: they carry CORS too.
        async with session.post("/api/stream", json={"model": MOCK, "prompt": "a b", "max_tokens": 2},
                                headers={"Origin": app_origin}) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == app_origin
            await response.read()
        # An error for an allowed origin is readable by its page.
        async with session.post("/v1/chat/completions", data=b"{", headers={"Origin": app_origin, **JSON}) as response:
            assert response.status == 400 and response.headers["Access-Control-Allow-Origin"] == app_origin
        # Allowed origins still send JSON only.
        async with session.post("/v1/chat/completions", data=json.dumps(CHAT),
                                headers={"Origin": app_origin, "Content-Type": "text/plain"}) as response:
            assert response.status == 415
        async with session.get("/v1/models", headers={"Origin": EVIL}) as response:
            assert response.status == 403
    status_line, _ = await raw_request(port, "GET", "/v1/models", {"Host": f"abi.lan:{port}"}, b"")
    assert b" 200 " in status_line
    status_line, _ = await raw_request(port, "GET", "/v1/models", {"Host": f"abi.lan.evil.example:{port}"}, b"")
    assert b" 403 " in status_line

