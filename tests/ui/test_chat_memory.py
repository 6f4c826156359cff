"""Memory in the Chat pane: a fact told in one chat is recalled into a new chat's answer (the
`memory` list of `abi.context`, shown above the answer), and one key forgets it for good.

The server has no model here (the mock answers): recall is BM25 with the packaged sentence
encoder's vectors when it is installed, else BM25 alone; with a chat model's embeddings the same
path is covered by tests/server/test_personas_api.py (real_model)."""

from __future__ import annotations

from abi_tui.client import AbiClient
from abi_tui.widgets.chat_view import ChatLog
from abi_tui.widgets.memory_list import MemoryList

from .conftest import SIZE, wait_for
from .test_chat import chat_app as chat_app  # noqa: F401 (fixtures shared with the Chat pane's tests)
from .test_chat import chat_ready, pane_of, send
from .test_chat import chat_server as chat_server  # noqa: F401

FACT = "My sister Clara lives in Lisbon."


def memory_lists(app) -> list[MemoryList]:
    return list(pane_of(app).query_one(ChatLog).query(MemoryList).results(MemoryList))


async def test_a_fact_from_one_chat_is_recalled_in_a_new_chat_and_forgotten(chat_app, chat_server):  # noqa: F811
    async with chat_app.run_test(size=SIZE) as pilot:
        # One token of played-back message ("My"): the answer itself holds nothing to remember.
        pane = await chat_ready(pilot, max_tokens=1)
        await send(pilot, FACT)
        first = pane.conversation_id
        async with AbiClient(chat_server.url) as client:
            for _ in range(100):  # remembered in the background after the answer
                items, _ = await client.memories(contains="Lisbon")
                if items:
                    break
                await pilot.pause(0.05)
            assert [i.text for i in items] == [FACT]

            await pilot.press("ctrl+n")
            await wait_for(pilot, lambda: pane.conversation_id not in (None, first), what="a new conversation")
            assert not memory_lists(chat_app)
            answer = await send(pilot, "Where does my sister live?")
            await wait_for(pilot, lambda: memory_lists(chat_app), what="the recalled memories")
            [shown] = memory_lists(chat_app)
            assert [m["text"] for m in shown.memories] == [FACT]
            assert shown.memories[0]["conversation_id"] == first
            # Shown just above the answer it was given to.
            children = list(pane.query_one(ChatLog).children)
            assert children.index(shown) == children.index(answer) - 1

            await pilot.press("ctrl+o")  # the only memory of the last answer
            await wait_for(pilot, lambda: shown.forgotten == {items[0].id}, what="the memory forgotten")
            remaining, _ = await client.memories(contains="Lisbon")
            assert remaining == []
            assert await client.recall("Where does my sister live?") == []

        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: not memory_lists(chat_app), what="another new conversation")
        await send(pilot, "Where does my sister live?")
        await pilot.pause(0.2)
        assert not memory_lists(chat_app)
