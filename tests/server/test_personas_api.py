"""Personas through the API: routing, persona chat with persistence, memory."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import aiohttp
import pytest

from abi_tui.personas.classifier import ADAPTER_PATH
from abi_tui.server.sse import parse_sse

JSON = {"Content-Type": "application/json"}


def events_of(text: str) -> list[tuple[str, dict]]:
    return [(e["event"], json.loads(e["data"])) for e in parse_sse(text) if "event" in e]


async def chat(session, content, *, conversation_id=None, persona=None, **extra):
    path = f"/api/v1/chat/{persona}" if persona else "/api/v1/chat"
    body = {"content": content, "max_tokens": 12, **extra}
    if conversation_id:
        body["conversation_id"] = conversation_id
    async with session.post(path, headers=JSON, data=json.dumps(body)) as response:
        assert response.status == 200, await response.text()
        return events_of(await response.text())


async def test_route_endpoint_and_catalogue(app_server):
    server = await app_server()
    async with aiohttp.ClientSession(server.url) as session:
        for content, expected in (("I'm so frustrated, nothing works and I'm about to give up", "abbey"),
                                  ("Write a Python function that parses ISO dates", "aviva"),
                                  ("rm -rf / --no-preserve-root", "abi")):
            async with session.post("/api/v1/personas/route", headers=JSON, data=json.dumps({"content": content})) as r:
                decision = await r.json()
            assert decision["persona"] == expected, decision
            assert decision["reason"] and 0 <= decision["confidence"] <= 1 and set(decision["scores"]) >= {"abi", "abbey", "aviva"}
        async with session.get("/api/v1/personas") as r:
            catalogue = await r.json()
        assert "abbey" in json.dumps(catalogue) and "aviva" in json.dumps(catalogue)


async def test_a_message_sent_at_start_up_waits_for_the_sentence_encoder(app_server, monkeypatch):
    """It is routed by words and meaning, as the same message is later, not by words alone
    because the encoder was still loading."""
    import asyncio
    import threading

    from abi_tui.models import sentence_encoder

    real = sentence_encoder.shared_encoder()
    real_tuned = sentence_encoder.shared_encoder(ADAPTER_PATH)
    assert real is not None, "the packaged sentence encoder is not installed (README)"
    loaded, embedded = threading.Event(), []

    class Recording:
        def __getattr__(self, name):
            return getattr(real, name)

        def encode(self, text):
            embedded.append(text)
            return real.encode(text)

    def slow_to_load(adapter=None):
        loaded.wait(10)
        return Recording() if adapter is None else real_tuned

    monkeypatch.setattr(sentence_encoder, "shared_encoder", slow_to_load)
    server = await app_server()
    content = "Which of you answers questions about the safety rules?"
    async with aiohttp.ClientSession(server.url) as session:
        request = asyncio.ensure_future(session.post("/api/v1/personas/route", headers=JSON,
                                                     data=json.dumps({"content": content})))
        await asyncio.sleep(0.5)
        assert not request.done(), "routed before the encoder had loaded"
        loaded.set()
        async with await request as response:
            decision = await response.json()
    assert content in embedded and decision["persona"] == "abi", decision
    assert decision["signals"]["classifier_input"] == "words, meaning and the tuned encoder"


async def test_a_context_too_short_for_the_personas_instructions_says_so(app_server, tiny_model):
    """A short message on a model loaded with a small context: the 400 says that the persona's
    instructions fill it and how to fix it, on both persona routes, and nothing is saved."""
    server = await app_server(model=str(tiny_model), n_ctx=256)
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/api/v1/chat/aviva", headers=JSON,
                                data=json.dumps({"content": "Sort a list in Python", "max_tokens": 8})) as r:
            assert r.status == 400
            error = (await r.json())["error"]
        assert error["code"] == "context_length_exceeded"
        assert "Aviva's instructions (" in error["message"] and "--n-ctx" in error["message"]
        async with session.post("/v1/chat/completions", headers=JSON, data=json.dumps({
                "model": "abbey", "max_tokens": 8, "messages": [{"role": "user", "content": "Hello!"}]})) as r:
            assert r.status == 400
            error = (await r.json())["error"]
        assert "Abbey's instructions (" in error["message"] and "--n-ctx" in error["message"]
        async with session.get("/api/v1/conversations") as r:
            assert (await r.json())["conversations"] == []


@pytest.mark.real_model
async def test_conversation_on_gemma_routes_each_message(app_server, gemma_model):
    server = await app_server(model=str(gemma_model), n_ctx=1024)
    async with aiohttp.ClientSession(server.url) as session:
        first = await chat(session, "I'm really frustrated, my build keeps failing and I feel like giving up.")
        start = first[0][1]
        context = first[1][1]
        assert first[0][0] == "abi.start" and start["persona"] == "abbey"
        assert "frustrat" in start["routing"]["reason"].lower()
        conversation = context["conversation_id"]
        second = await chat(session, "Write a Python function that reverses a linked list.", conversation_id=conversation)
        assert second[0][1]["persona"] == "aviva" and second[0][1]["routing"]["reason"]
        third = await chat(session, "rm -rf /", conversation_id=conversation)
        assert third[0][1]["persona"] == "abi" and third[0][1]["routing"]["reason"]
        assert [kind for kind, _ in third][-1] == "abi.end"
        async with session.get(f"/api/v1/conversations/{conversation}") as r:
            saved = await r.json()
        assistants = [m for m in saved["messages"] if m["role"] == "assistant"]
        assert [m["persona"] for m in assistants] == ["abbey", "aviva", "abi"]
        assert all(m["status"] == "done" and m["content"] for m in assistants)
        assert all(m["ttft_ms"] is not None for m in assistants[:2])
        # The refusal is the server's own: no model, so no time to a model's first token.
        assert assistants[2]["model"] == "abi/moderation" and assistants[2]["ttft_ms"] is None
        async with session.get("/api/v1/personas/metrics") as r:
            metrics = (await r.json())["personas"]
        assert metrics["abbey"]["requests"] == metrics["aviva"]["requests"] == metrics["abi"]["requests"] == 1
        async with session.get("/metrics") as r:
            assert 'abi_persona_requests_total{persona="aviva"} 1.0' in await r.text()
        # Persona ids as OpenAI model ids, and @overrides.
        async with session.post("/v1/chat/completions", headers=JSON, data=json.dumps({
                "model": "auto", "max_tokens": 4,
                "messages": [{"role": "user", "content": "@aviva how do I list files?"}]})) as r:
            body = await r.json()
        assert body["routing"]["persona"] == "aviva"


@pytest.mark.real_model
async def test_memory_recalls_a_fact_across_conversations_and_restarts(app_server, gemma_model, abi_home):
    fact = "My dog's name is Biscuit and he loves running on the beach."
    server = await app_server(model=str(gemma_model), n_ctx=1024)
    async with aiohttp.ClientSession(server.url) as session:
        await chat(session, fact, persona="abbey")
        service = server.state.services["personas"]
        await _remembered(service, "Biscuit")
        recalled = await chat(session, "What is my dog called?", persona="abbey")
        memory = recalled[1][1]["memory"]
        assert any("Biscuit" in hit["text"] for hit in memory), memory
        unrelated = await chat(session, "What's the weather like on Mars?", persona="abbey")
        assert not any("Biscuit" in hit["text"] for hit in unrelated[1][1]["memory"])
    # A new server on the same $ABI_HOME still remembers.
    again = await app_server(model=str(gemma_model), n_ctx=1024)
    async with aiohttp.ClientSession(again.url) as session:
        recalled = await chat(session, "What is the name of my dog?", persona="abbey")
        assert any("Biscuit" in hit["text"] for hit in recalled[1][1]["memory"])


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


async def _remembered(service, needle: str) -> None:
    """Wait (bounded) until the fact is in both halves of memory: the items and the vectors."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        memory = service.memory
        if memory is not None and memory.vectors is not None:
            items, _ = memory.items.list(contains=needle)
            if items and not memory.vectors.missing([i.id for i in items]):
                return
        await _sleep(0.1)
    raise AssertionError(f"{needle!r} was not remembered within 30 s ({service.memory_state})")


@pytest.mark.real_model
async def test_chroma_server_mode(app_server, gemma_model, tmp_path, monkeypatch):
    chroma = shutil.which("chroma", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert chroma, "the chroma CLI comes with chromadb"
    from conftest import free_port

    port = free_port()
    process = subprocess.Popen([chroma, "run", "--path", str(tmp_path / "chroma"), "--host", "127.0.0.1",
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
                break
            except Exception:
                time.sleep(0.2)
        monkeypatch.setenv("ABI_VECTOR_STORE_URL", f"http://127.0.0.1:{port}")
        server = await app_server(model=str(gemma_model), n_ctx=1024)
        async with aiohttp.ClientSession(server.url) as session:
            await chat(session, "The launch code word for the project is Pelican.", persona="aviva")
            service = server.state.services["personas"]
            await _remembered(service, "Pelican")
        import chromadb

        remote = chromadb.HttpClient(host="127.0.0.1", port=port)
        names = [c.name for c in remote.list_collections()]
        assert any(name.startswith("items-") for name in names)
        assert not (server.state.settings.vectors_dir / "chroma.sqlite3").exists()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)


async def test_sigkill_mid_answer_keeps_the_partial_answer(serve, abi_home):
    """Kill the server while it answers: after a restart the partial answer is there, marked."""
    server = serve()
    slow = "mock/constant_rate?min_ms=40&max_ms=40"
    first = json.dumps({"content": "remember this first turn", "model": "mock/constant_rate?min_ms=1&max_ms=1",
                        "max_tokens": 5, "stream": False}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{server.url}/api/v1/chat", data=first, headers=JSON)) as r:
        done = json.loads(r.read())
    conversation = done["conversation_id"]
    body = json.dumps({"content": "one two three four five six", "model": slow, "max_tokens": 400,
                       "conversation_id": conversation}).encode()
    response = urllib.request.urlopen(urllib.request.Request(f"{server.url}/api/v1/chat", data=body, headers=JSON))
    received = b""
    while received.count(b"event: abi.token") < 25:
        received += response.read1(4096)
    time.sleep(0.6)  # past the store's flush interval
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    restarted = serve()
    with urllib.request.urlopen(f"{restarted.url}/api/v1/conversations/{conversation}") as r:
        saved = json.loads(r.read())
    messages = saved["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1]["status"] == "done" and messages[1]["content"] == done["content"]
    partial = messages[3]
    assert partial["status"] == "incomplete" and not partial["complete"]
    assert partial["content"].startswith("one two three four five six one")
    assert len(partial["content"].split()) >= 20
