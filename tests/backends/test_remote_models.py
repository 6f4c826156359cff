"""/v1/models lists what the remote endpoints serve, asked with a short timeout and cached."""

from __future__ import annotations

import socket
import time

import aiohttp
from fakes.providers import FakeOpenAI, Script

from abi_tui.backends.remote.listing import LIST_TIMEOUT_S


async def model_ids(url: str) -> tuple[list[dict], float]:
    started = time.monotonic()
    async with aiohttp.ClientSession(url) as session:
        async with session.get("/v1/models") as response:
            assert response.status == 200
            data = (await response.json())["data"]
    return data, time.monotonic() - started


async def test_models_of_every_endpoint_are_listed_and_cached(remote):
    remote.fakes["ollama"].script = Script(models=["llama3:8b", "qwen2.5:0.5b"])
    remote.fakes["anthropic"].script = Script(models=["claude-fake"])
    remote.fakes["openai"].script = Script(models=["gpt-fake"])
    server = await remote.start()
    data, _ = await model_ids(server.url)
    remote_ids = [m["id"] for m in data if m["kind"] == "remote"]
    assert remote_ids == ["openai/gpt-fake", "ollama/llama3:8b", "ollama/qwen2.5:0.5b", "anthropic/claude-fake",
                          "local/fake-small", "local/fake-large"]
    assert {"auto", "mock/constant_rate"} <= {m["id"] for m in data}  # the rest of the list is still there
    # Listing requests carry each provider's credentials (the fakes refuse them otherwise).
    assert remote.fakes["local"].list_requests == remote.fakes["anthropic"].list_requests == 1
    again, _ = await model_ids(server.url)
    assert [m["id"] for m in again] == [m["id"] for m in data]
    assert all(fake.list_requests == 1 for fake in remote.fakes.values())  # answered from the cache


async def test_an_unreachable_or_silent_endpoint_does_not_hold_the_list(remote):
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    with FakeOpenAI(Script(list_stall_s=30)) as silent:
        remote.configure("dead", url=f"http://127.0.0.1:{dead_port}/v1")
        remote.configure("silent", url=silent.base_url)
        server = await remote.start()
        data, took = await model_ids(server.url)
        assert took < LIST_TIMEOUT_S + 3
        ids = {m["id"] for m in data}
        assert "local/fake-small" in ids and "ollama/fake-small" in ids
        assert not any(i.startswith(("dead/", "silent/")) for i in ids)
        _, took_again = await model_ids(server.url)  # the failure is remembered for a while
        assert took_again < 1.5 and silent.list_requests == 1


async def test_an_endpoint_can_stay_out_of_the_list(remote):
    remote.configure("local", list_models=False)
    server = await remote.start()
    data, _ = await model_ids(server.url)
    assert not any(m["id"].startswith("local/") for m in data) and remote.fakes["local"].list_requests == 0
