"""A newcomer's first chat: `abi dash --serve` with no flags on a fresh $ABI_HOME loads the
packaged instruct model, and persona chat answers like a chat model, on it and on a base model."""

from __future__ import annotations

import difflib
import json
import re
import time
import urllib.request

import pytest

from abi_tui.personas import get_persona
from abi_tui.personas.transcript import transcript_prefix

pytestmark = pytest.mark.real_model

# A reply to a greeting: greets back, or asks after the user ("How's your day going?").
GREETING = re.compile(r"\b(hi|hello|hey|greetings|good (morning|afternoon|evening)|nice to meet|glad|"
                      r"how are you|how's your|how is your)\b", re.I)


def persona_chat(url: str, content: str, **extra) -> dict:
    body = json.dumps({"content": content, "stream": False, "max_tokens": 160, "seed": 11, **extra}).encode()
    request = urllib.request.Request(url + "/api/v1/chat", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def longest_shared(a: str, b: str) -> int:
    match = difflib.SequenceMatcher(None, a.lower(), b.lower(), autojunk=False).find_longest_match()
    return match.size


def assert_answers_not_recites(answer: str, question: str, persona: str, *, base_model: bool) -> None:
    assert answer.strip(), "empty answer"
    instructions = transcript_prefix(get_persona(persona)) if base_model else get_persona(persona).system_prompt
    assert longest_shared(answer, instructions) < 40, f"recites its instructions: {answer!r}"
    assert question.lower().rstrip("?.!") not in answer.lower(), f"echoes the question: {answer!r}"
    assert "You are " + get_persona(persona).name not in answer


def test_a_fresh_serve_loads_the_instruct_demo_and_chats(serve):
    server = serve(env={"ABI_MODELS_DEFAULT": "demo-chat", "ABI_THREADS": "2"})
    with urllib.request.urlopen(server.url + "/health") as response:
        health = json.loads(response.read())
    assert health["state"] == "ready" and health["model"].startswith("SmolLM2-135M-Instruct"), health

    question = "Write a Python function that reverses a string."
    reply = persona_chat(server.url, question)
    assert reply["persona"] == "aviva" and reply["model"].startswith("SmolLM2")
    assert "def " in reply["content"] and "return" in reply["content"], reply["content"]
    assert_answers_not_recites(reply["content"], question, "aviva", base_model=False)

    # Greedy: a sampled reply of a 135M model turns on the last bits of its logits, which differ
    # with how the persona prefix reached the cache (prefilled with the message, or copied from
    # the pin warmed at start-up, a race with this request); the greedy reply is the same both ways.
    question = "Hi there! How are you doing today?"
    reply = persona_chat(server.url, question, temperature=0)
    assert reply["persona"] == "abbey"
    assert GREETING.search(reply["content"]), reply["content"]
    assert_answers_not_recites(reply["content"], question, "abbey", base_model=False)


def test_a_base_model_continues_a_transcript_and_stops_at_the_users_turn(serve, gemma_model):
    server = serve("--model", str(gemma_model), env={"ABI_THREADS": "2"})
    for question, persona in (("Hello! Nice to meet you.", "abbey"),
                              ("How do I count the lines in a file on Linux?", "aviva"),
                              ("Which persona answers questions about your safety rules?", "abi")):
        reply = persona_chat(server.url, question)
        assert reply["persona"] == persona, reply["routing"]
        answer = reply["content"]
        assert_answers_not_recites(answer, question, persona, base_model=True)
        assert "\nUser:" not in answer and not answer.lstrip().startswith("User:")


def test_without_a_model_persona_chat_says_how_to_load_one(serve):
    server = serve()  # the test default: models.default = none
    body = json.dumps({"content": "Hello!", "stream": False}).encode()
    request = urllib.request.Request(server.url + "/api/v1/chat", data=body, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as failure:
        urllib.request.urlopen(request, timeout=30)
    assert failure.value.code == 503
    error = json.loads(failure.value.read())["error"]
    assert error["code"] == "no_model_loaded" and "--model" in error["message"]
    # Streamed, the same error arrives before any event: nothing pretends to answer.
    request = urllib.request.Request(server.url + "/v1/chat/completions", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"model": "default", "stream": True,
                                                      "messages": [{"role": "user", "content": "hi"}]}).encode())
    with pytest.raises(urllib.error.HTTPError) as failure:
        urllib.request.urlopen(request, timeout=30)
    assert failure.value.code == 503
    assert json.loads(failure.value.read())["error"]["code"] == "no_model_loaded"


def test_a_start_up_model_that_cannot_load_says_why(serve):
    """On stderr, where a headless server's user looks, and in /health; while the sentence
    encoder loads at start-up too (its load once silenced the process's stderr)."""
    server = serve("--model", "no-such-model")
    deadline = time.monotonic() + 30
    while "could not load no-such-model" not in server.stderr and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "could not load no-such-model" in server.stderr, server.stderr
    with urllib.request.urlopen(server.url + "/health") as response:
        health = json.loads(response.read())
    assert health["state"] == "error" and health["model"] is None, health
    assert "no-such-model" in health["error"] and "abi model" in health["error"], health
