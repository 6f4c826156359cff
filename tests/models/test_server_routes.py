"""The server's model routes through HTTP: GET /api/models, POST /api/models/pull (SSE progress),
DELETE /api/models/{name}, the download controls, and --model / reload with any spec form."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from abi_tui.server.sse import parse_sse

from .fakehub import Fault

SPEC = "acme/big-GGUF:Q4_K_M"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def data(hub, gguf_bytes) -> bytes:
    content = gguf_bytes(11, big=True)
    hub.add_repo("acme/big-GGUF", {"big-Q4_K_M.gguf": content, "big-Q8_0.gguf": gguf_bytes(12)})
    return content


@pytest.fixture
async def server(app_server, hub):
    return await app_server(threads=1, n_ctx=256)


async def pull_events(session: aiohttp.ClientSession, body: dict) -> list[dict]:
    async with session.post("/api/models/pull", headers=JSON, data=json.dumps(body)) as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        return parse_sse(await response.text())


async def test_pull_streams_progress_then_lists_and_removes(server, data) -> None:
    async with aiohttp.ClientSession(server.url) as session:
        events = await pull_events(session, {"model": SPEC})
        kinds = [e.get("event") for e in events if "event" in e]
        assert kinds[-1] == "done" and "progress" in kinds
        done = json.loads(next(e["data"] for e in events if e.get("event") == "done"))
        assert done["state"] == "done" and done["downloaded"] == done["total"] == len(data)
        assert done["model"]["name"] == "big-Q4_K_M" and done["model"]["verified"] is True
        assert events[-1]["data"] == "[DONE]"
        states = {json.loads(e["data"])["state"] for e in events if e.get("event") == "progress"}
        assert "downloading" in states or "verifying" in states

        async with session.get("/api/models") as response:
            listed = await response.json()
        assert [m["name"] for m in listed["data"]] == ["big-Q4_K_M"]
        async with session.get("/v1/models") as response:
            ids = {m["id"]: m for m in (await response.json())["data"]}
        assert ids["big-Q4_K_M"]["kind"] == "local" and ids["big-Q4_K_M"]["quant"] == "Q4_K_M"

        async with session.delete("/api/models/acme/big-GGUF:Q4_K_M") as response:
            assert response.status == 200
            assert (await response.json())["removed"] == "big-Q4_K_M"
        async with session.delete("/api/models/big-Q4_K_M") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "model_not_found"
    history = [e["type"] for e in server.state.events.history]
    assert "model.download" in history and "model.removed" in history


async def test_pull_errors(server, data) -> None:
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/api/models/pull", headers=JSON, data=json.dumps({"model": "no-slash"})) as response:
            assert response.status == 400
            assert (await response.json())["error"]["param"] == "model"
        async with session.post("/api/models/pull", headers=JSON,
                                data=json.dumps({"model": SPEC, "sha256": "xyz"})) as response:
            assert response.status == 400
        events = await pull_events(session, {"model": "acme/big-GGUF:Q5_K_M"})
        error = json.loads(next(e["data"] for e in events if e.get("event") == "error"))
        assert error["error"]["code"] == "model_not_found" and "Q4_K_M" in error["error"]["message"]
        assert events[-1]["data"] == "[DONE]"
        async with session.post("/api/models/pull", headers=JSON,
                                data=json.dumps({"model": "acme/nope:Q4_K_M", "stream": False})) as response:
            assert response.status == 404


async def test_pull_without_stream_and_a_loaded_model_cannot_be_removed(server, data) -> None:
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/api/models/pull", headers=JSON,
                                data=json.dumps({"model": SPEC, "stream": False})) as response:
            body = await response.json()
            assert response.status == 200 and body["model"]["name"] == "big-Q4_K_M"
        # Any spec form loads once cached; the server then names the model by its cache name.
        async with session.post("/admin/reload", headers=JSON,
                                data=json.dumps({"model": "hf://acme/big-GGUF/big-Q4_K_M.gguf"})) as response:
            assert response.status == 200, await response.text()
        async with session.get("/health") as response:
            assert (await response.json())["model"] == "big-Q4_K_M"
        async with session.delete("/api/models/big-Q4_K_M") as response:
            assert response.status == 409
            assert (await response.json())["error"]["code"] == "model_in_use"
        async with session.get("/api/models") as response:
            assert [m["loaded"] for m in (await response.json())["data"]] == [True]


async def test_downloads_can_be_listed_paused_resumed_and_cancelled(server, hub, data) -> None:
    hub.throttle_bps = 1_500_000
    async with aiohttp.ClientSession(server.url) as session:
        following = asyncio.create_task(pull_events(session, {"model": SPEC}))
        download_id = None
        for _ in range(500):
            async with session.get("/api/models/downloads") as response:
                running = (await response.json())["data"]
            if running and running[0]["downloaded"] > 0:
                download_id = running[0]["id"]
                break
            await asyncio.sleep(0.02)
        assert download_id is not None
        async with session.post(f"/api/models/downloads/{download_id}/pause") as response:
            assert response.status == 200
        for _ in range(250):
            async with session.get("/api/models/downloads") as response:
                if (await response.json())["data"][0]["state"] == "paused":
                    break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("never paused")
        async with session.post(f"/api/models/downloads/{download_id}/resume") as response:
            assert response.status == 200
        async with session.post(f"/api/models/downloads/{download_id}/cancel") as response:
            assert response.status == 200
        events = await asyncio.wait_for(following, 20)
        kinds = [e.get("event") for e in events if "event" in e]
        assert kinds[-1] == "error"
        assert json.loads(next(e["data"] for e in events if e.get("event") == "error"))["error"]["code"] == "download_cancelled"
        async with session.post("/api/models/downloads/nope/cancel") as response:
            assert response.status == 404
    assert not list(server.state.settings.models_dir.rglob("*.part"))


async def test_a_faulty_hub_still_completes_through_the_server(server, hub, data) -> None:
    hub.faults += [Fault(status=503), Fault(drop_after=700_000)]
    async with aiohttp.ClientSession(server.url) as session:
        events = await pull_events(session, {"model": SPEC})
    assert [e.get("event") for e in events if "event" in e][-1] == "done"
    assert [r.sent for r in hub.file_requests()] == [0, 700_000, len(data) - 700_000]


async def test_server_model_flag_takes_a_hub_spec_once_cached(app_server, settings, hub, data) -> None:
    from abi_tui.models import pull_model
    from abi_tui.models.download import DownloadOptions

    await pull_model(settings, SPEC, options=DownloadOptions())
    running = await app_server(model="acme/big-gguf:q4_k_m", threads=1, n_ctx=256)
    async with aiohttp.ClientSession(running.url) as session:
        async with session.get("/health") as response:
            body = await response.json()
    assert body["model"] == "big-Q4_K_M" and body["state"] == "ready"


async def test_the_dashboard_client_drives_the_model_routes(server, hub, data) -> None:
    """The same calls the Models pane makes, through abi_tui.client."""
    from abi_tui.client import AbiClient

    async with AbiClient(server.url) as client:
        found = await client.search("big", limit=5)
        assert found[0].repo == "acme/big-GGUF"
        assert {q.quant: q.size for q in found[0].quants}["Q4_K_M"] == len(data)
        events = [event async for event in client.pull(SPEC)]
        assert events[-1].state == "done" and events[-1].downloaded == len(data)
        info = await client.model_info("acme/big-GGUF:Q4_K_M")  # a name with a slash, percent-encoded
        assert info.name == "big-Q4_K_M" and info.memory_estimate.total_bytes > info.memory_estimate.weights_bytes
        assert [m.name for m in await client.models()] == ["big-Q4_K_M"]
        failed = [event async for event in client.pull("acme/big-GGUF:Q6_K")]
        assert failed[-1].state == "failed" and failed[-1].error_code == "model_not_found"
        assert (await client.delete_model("big-Q4_K_M"))["removed"] == "big-Q4_K_M"
        assert await client.models() == []
