"""Hot reload, the model pool, events and metrics."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from gguf import GGUFWriter
from prometheus_client.parser import text_string_to_metric_families
from tiny_gguf import write_not_gguf, write_tiny_gguf, write_truncated_gguf

JSON = {"Content-Type": "application/json"}


def slow_down(backend, seconds: float = 0.01):
    step = backend._step

    def slow_step():
        time.sleep(seconds)
        step()

    backend._step = slow_step


async def post(session, path, body):
    async with session.post(path, headers=JSON, data=json.dumps(body)) as response:
        return response.status, await response.json()


async def complete(session, prompt="abc", max_tokens=4, **extra):
    return await post(session, "/v1/completions", {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra})


def write_unknown_architecture(path):
    """A well-formed GGUF that llama.cpp refuses to load: it passes validation, fails the load."""
    writer = GGUFWriter(str(path), "no-such-arch")
    writer.add_name("broken")
    import numpy as np

    writer.add_tensor("token_embd.weight", np.zeros((8, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
async def server(app_server, tiny_model, tmp_path):
    # API clients may name files by path only under server.model_dirs: the test models' folder
    # and this test's own files.
    return await app_server(model=str(tiny_model), threads=1, n_ctx=512,
                            model_dirs=f"{tiny_model.parent},{tmp_path}")


async def test_reload_to_corrupt_files_keeps_the_previous_model(server, tiny_model, tmp_path):
    truncated = write_truncated_gguf(tiny_model, tmp_path / "truncated.gguf")
    not_gguf = write_not_gguf(tmp_path / "notes.gguf")
    async with aiohttp.ClientSession(server.url) as session:
        status, body = await post(session, "/admin/reload", {"model": str(truncated)})
        assert status == 422 and "truncated" in body["error"]["message"]
        status, body = await post(session, "/admin/reload", {"model": str(not_gguf)})
        assert status == 422 and "not a GGUF" in body["error"]["message"]
        status, body = await complete(session)
        assert status == 200 and body["model"] == "tiny"
        async with session.get("/health") as response:
            assert (await response.json())["model"] == "tiny"


async def test_failed_load_rolls_back_with_both_errors(server, tmp_path):
    broken = write_unknown_architecture(tmp_path / "broken.gguf")
    async with aiohttp.ClientSession(server.url) as session:
        events = await session.get("/api/events")
        status, body = await post(session, "/admin/reload", {"model": str(broken)})
        assert status == 500
        message = body["error"]["message"]
        assert "could not load broken" in message and "rolled back to tiny" in message
        assert body["error"]["code"] == "reload_failed"
        status, answer = await complete(session)
        assert status == 200 and answer["model"] == "tiny"
        seen = b""
        deadline = time.monotonic() + 3
        while b"reload.failed" not in seen and time.monotonic() < deadline:
            seen += await events.content.readany()
        assert b"event: reload.started" in seen and b"event: reload.failed" in seen
        events.close()


async def test_reload_while_streams_run_drains_then_swaps(server, tiny_model_b):
    engine = server.state.engine
    slow_down(engine.active_backend(), 0.01)
    async with aiohttp.ClientSession(server.url) as session:
        running = [asyncio.create_task(complete(session, prompt=f"p{i}", max_tokens=40)) for i in range(3)]
        while engine.active_streams < 3:
            await asyncio.sleep(0.005)
        reload = asyncio.create_task(post(session, "/admin/reload", {"model": str(tiny_model_b)}))
        await asyncio.sleep(0.05)
        during = [asyncio.create_task(complete(session, prompt=f"d{i}", max_tokens=3)) for i in range(3)]
        status, result = await reload
        assert status == 200, result
        assert result["previous_model"] == "tiny" and result["model"] == "tiny-b"
        assert result["drained"] == 3 and result["cancelled"] == 0 and result["load_ms"] >= 0
        for task in running:
            status, body = await task
            assert status == 200 and body["model"] == "tiny" and body["usage"]["completion_tokens"] == 40
        for task in during:  # queued during the swap, answered by the new model, none refused
            status, body = await task
            assert status == 200 and body["model"] == "tiny-b", body


async def test_drain_timeout_409_then_force_cancels(server, tiny_model_b):
    engine = server.state.engine
    slow_down(engine.active_backend(), 0.02)
    async with aiohttp.ClientSession(server.url) as session:
        long_run = asyncio.create_task(complete(session, max_tokens=400))
        while engine.active_streams < 1:
            await asyncio.sleep(0.005)
        status, body = await post(session, "/admin/reload", {"model": str(tiny_model_b), "drain_timeout_s": 0.2})
        assert status == 409 and "force" in body["error"]["message"]
        status, body = await complete(session, max_tokens=2)  # the old model keeps serving
        assert status == 200 and body["model"] == "tiny"
        status, result = await post(session, "/admin/reload", {"model": str(tiny_model_b), "drain_timeout_s": 0.2,
                                                               "force": True})
        assert status == 200 and result["cancelled"] == 1 and result["model"] == "tiny-b"
        status, body = await long_run
        assert status == 200 and body["usage"]["completion_tokens"] < 400


async def test_resident_model_swaps_without_reloading(server, tiny_model_b):
    async with aiohttp.ClientSession(server.url) as session:
        status, _ = await post(session, "/admin/reload", {"model": str(tiny_model_b)})
        assert status == 200
        loads = server.state.engine.pool.counters.loads
        status, back = await post(session, "/admin/reload", {"model": "tiny"})
        assert status == 200 and back["resident"] is True and back["model"] == "tiny"
        assert server.state.engine.pool.counters.loads == loads


async def test_pool_keeps_two_and_evicts_least_recently_used(server, tiny_model, tiny_model_b, tmp_path):
    third = write_tiny_gguf(tmp_path / "tiny-c.gguf", seed=11, name="tiny-c")
    pool = server.state.engine.pool
    one_model = pool.used_bytes()
    assert one_model > 0
    pool.budget_bytes = int(one_model * 2.5)  # room for two
    async with aiohttp.ClientSession(server.url) as session:
        status, body = await complete(session, model=str(tiny_model_b))
        assert status == 200 and body["model"] == "tiny-b"
        assert set(pool.resident) == {"tiny", "tiny-b"}
        await complete(session)  # touch the active model: tiny-b is now least recently used
        status, body = await complete(session, model=str(third))
        assert status == 200 and body["model"] == "tiny-c"
        assert set(pool.resident) == {"tiny", "tiny-c"}
        async with session.get("/api/telemetry?history=0") as response:
            stats = (await response.json())["latest"]["pool"]
    stats = pool.stats()
    assert stats["evictions"] == 1 and stats["loads"] == 3 and stats["misses"] == 3 and stats["hits"] >= 1
    assert [e["model"] for e in stats["events"] if e["event"] == "evicted"] == ["tiny-b"]
    for model in stats["models"]:
        assert model["bytes"]["weights"] > 0 and model["bytes"]["kv_cache"] > 0
        assert model["kv_cells_capacity"] > 0
    assert stats["peak_bytes"] >= stats["used_bytes"]


async def test_metrics_parse_and_move(server):
    async def scrape(session) -> dict:
        async with session.get("/metrics") as response:
            text = await response.text()
        values = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = sample.name + json.dumps(sample.labels, sort_keys=True)
                values[key] = sample.value
        return values

    async with aiohttp.ClientSession(server.url) as session:
        before = await scrape(session)
        for _ in range(2):
            await complete(session, max_tokens=5)
        after = await scrape(session)
    requests = 'abi_requests_total{"route": "/v1/completions", "status": "200"}'
    assert after[requests] - before.get(requests, 0) == 2
    assert after["abi_generated_tokens_total{}"] - before["abi_generated_tokens_total{}"] == 10
    assert after["abi_ttft_seconds_count{}"] - before["abi_ttft_seconds_count{}"] == 2
    assert after['abi_model_loaded{"model": "tiny"}'] == 1
    assert after['abi_pool_bytes{"kind": "weights", "model": "tiny"}'] > 0
    assert "abi_active_streams{}" in after and "abi_queued_requests{}" in after


async def test_openapi_describes_every_route(server):
    async with aiohttp.ClientSession(server.url) as session:
        async with session.get("/openapi.json") as response:
            document = await response.json()
    served = set()
    for route in server.app.router.routes():
        info = route.resource.get_info()
        served.add(info.get("path") or info.get("formatter"))
    assert document["openapi"].startswith("3.1")
    assert served <= set(document["paths"]), served - set(document["paths"])


async def test_parallel_fits_the_memory_budget(app_server, tiny_model):
    """8 sequences by default; a budget too small for 8 sequences' KV cells gets fewer, and
    /health says how many."""
    from abi_tui.backends.llamacpp import LlamaOptions
    from abi_tui.backends.pool import estimate_bytes

    roomy = await app_server(model=str(tiny_model), threads=1, n_ctx=512)
    assert roomy.state.engine.active_backend().capacity == 8
    budget = estimate_bytes(tiny_model, LlamaOptions(n_ctx=512, parallel=2))
    tight = await app_server(model=str(tiny_model), threads=1, n_ctx=512, pool_memory_budget=budget)
    async with aiohttp.ClientSession(tight.url) as session:
        async with session.get("/health") as response:
            assert (await response.json())["parallel"] == 2
        async with session.post("/v1/completions", json={"prompt": "hi", "max_tokens": 4}) as response:
            assert response.status == 200
