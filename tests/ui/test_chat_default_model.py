"""The Chat pane as a newcomer meets it: no model named, the packaged instruct model answers."""

from __future__ import annotations

import pytest

from .conftest import UiServer, wait_for
from .test_chat import answers, chat_ready, pane_of, send

pytestmark = [pytest.mark.real_model, pytest.mark.chat_demo]


@pytest.fixture
def default_model_app(make_app):
    server = UiServer({"models.default": "demo-chat", "server.threads": 2, "server.n_ctx": 2048}).start()
    yield make_app(server)
    server.stop()


async def test_first_chat_on_the_default_model_gets_code_and_a_greeting(default_model_app):
    async with default_model_app.run_test(size=(120, 34)) as pilot:
        pane = await chat_ready(pilot)
        pane.request_options = {"max_tokens": 120, "seed": 5}  # no model: the server's default answers
        await wait_for(pilot, lambda: (pilot.app.link.health.model or "").startswith("SmolLM2"),
                       what="the demo model", timeout=120)
        answer = await answer_to(pilot, "Write a Python function that reverses a string.")
        assert answer.persona == "aviva" and answer.status == "done", (answer.status, answer.error)
        assert "def " in answer.text and "You are Aviva" not in answer.text
        answer = await answer_to(pilot, "Hello! How are you today?")
        assert answer.persona == "abbey" and answer.text.strip()
        assert "hello! how are you today" not in answer.text.lower()
        assert len(answers(pilot.app)) == 2


async def answer_to(pilot, text: str):
    answer = await send(pilot, text, wait=False)
    await wait_for(pilot, lambda: answer.status != "streaming" and pane_of(pilot.app).streaming is None,
                   what="the answer", timeout=180)
    return answer
