"""Chat pane against a real server with no model loaded, so the mock backend answers (it plays
back the message's words): routing to Abi, Abbey and Aviva with badge and reason, streaming,
Esc cancelling (the server keeps the partial answer marked cancelled), Enter and ctrl+j,
conversations (new, open, rename, delete, export), copy, and following the answer only while
the user is at the bottom. Snapshots freeze timings with the app's frozen formatter; update
them with `pytest tests/ui/test_chat.py --snapshot-update` and look at them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from textual import events
from textual.widgets import Input, OptionList, Static

from abi_tui.app import AbiApp
from abi_tui.client import AbiClient
from abi_tui.dialogs.confirm import ConfirmDialog
from abi_tui.panes.chat import ChatPane, TitlePrompt
from abi_tui.widgets.chat_view import AnswerMessage, ChatInput, ChatLog, UserMessage

from .conftest import SIZE, UiServer, wait_for

FAST = "mock/constant_rate?min_ms=1&max_ms=1"
# Seven tokens at once, then a minute's pause: an answer caught mid-stream, always at the same place.
STALLS = "mock/burst?min_ms=1&max_ms=60000"
FRUSTRATED = "I'm so frustrated, nothing I try works and I feel stuck"
CODE = "Write a Python function that parses a CSV file"
DESTRUCTIVE = "rm -rf /"


@pytest.fixture
def chat_server(monkeypatch: pytest.MonkeyPatch):
    """The embedded server with no model: the mock backend answers. A short heartbeat makes the
    server notice a closed stream at once even while the mock pauses. The mock ends a cancelled
    stream only after the pause it is in (a minute for STALLS), so the server's shutdown does not
    wait the usual 10 s for it."""
    monkeypatch.setattr("abi_tui.server.main.SHUTDOWN_GRACE_S", 0.5)
    server = UiServer({"server.heartbeat_ms": 100}).start()
    yield server
    server.stop()


@pytest.fixture
def chat_app(chat_server, make_app):
    return make_app(chat_server)


def pane_of(app: AbiApp) -> ChatPane:
    return app.pane("chat")  # type: ignore[return-value]


def answers(app: AbiApp) -> list[AnswerMessage]:
    return pane_of(app).query_one(ChatLog).answers()


def text_of(widget: Static) -> str:
    return str(widget.render())


def notes(app: AbiApp) -> str:
    return "\n".join(f"{n.title}: {n.message}" for n in app._notifications)


async def chat_ready(pilot: Any, **options: Any) -> ChatPane:
    app: AbiApp = pilot.app
    await wait_for(pilot, lambda: app.link.connected and app.link.health is not None, what="connection")
    if app.active_pane != "chat":
        app.show_pane("chat")
    await wait_for(pilot, lambda: pane_of(app).is_mounted, what="the chat pane")
    pane = pane_of(app)
    await wait_for(pilot, lambda: pane.loaded_once and len(pane.personas) == 3, what="conversations and personas")
    pane.request_options = {"model": FAST, "max_tokens": 12, **options}
    pane.query_one(ChatInput).focus()
    return pane


async def send(pilot: Any, text: str, *, wait: bool = True) -> AnswerMessage:
    """Put the text in the message box and press Enter (typing long text key by key is slow)."""
    pane = pane_of(pilot.app)
    before = len(answers(pilot.app))
    pane.query_one(ChatInput).insert(text)
    await pilot.press("enter")
    await wait_for(pilot, lambda: len(answers(pilot.app)) == before + 1, what="the answer widget")
    answer = answers(pilot.app)[-1]
    if wait:
        await wait_for(pilot, lambda: answer.status != "streaming" and pane.streaming is None, what="the answer")
    return answer


async def settle(pilot: Any, streams: int = 0) -> None:
    """The conversation list refreshes after each answer, the header shows the server's streams
    from /health once a second: let both land before a screenshot."""
    app: AbiApp = pilot.app
    await wait_for(pilot, lambda: app.link.health is not None and app.link.health.active_streams == streams,
                   what=f"{streams} streams in /health")
    pane = pane_of(pilot.app)

    def busy() -> list[Any]:
        return [w for w in pilot.app.workers if w.node is pane and w.is_running and w.group != "chat-answer"]

    await wait_for(pilot, lambda: not busy(), what="the pane's requests")
    await pilot.pause(0.3)


# ------------------------------------------------------------------------------------ pilot
async def test_each_message_goes_to_its_persona_with_badge_and_reason(chat_app):
    async with chat_app.run_test(size=SIZE) as pilot:
        await chat_ready(pilot)
        expected = ((FRUSTRATED, "abbey", "Abbey", "frustration"), (CODE, "aviva", "Aviva", "code"))
        for message, persona, name, why in expected:
            answer = await send(pilot, message)
            assert answer.status == "done" and answer.persona == persona
            head = text_of(answer.query_one(".answer-head", Static))
            assert head.startswith(f" {name} ") and why in head.lower()
            assert answer.text.split()[:2] == message.split()[:2]  # the mock plays the message back
            foot = text_of(answer.query_one(".answer-foot", Static))
            assert "TTFT 12 ms" in foot and "100.0 tok/s" in foot and "12 tokens" in foot and FAST in foot
        # A policy violation is refused by the server: Abi's answer with the rule, no model.
        answer = await send(pilot, DESTRUCTIVE)
        assert answer.status == "done" and answer.persona == "abi"
        head = text_of(answer.query_one(".answer-head", Static))
        assert head.startswith(" Abi ") and "rule: destructive commands" in head
        assert answer.text.startswith("I won't help with that") and "rm" not in answer.text.split()
        users = [u.text for u in pane_of(chat_app).query(UserMessage).results(UserMessage)]
        assert users == [FRUSTRATED, CODE, DESTRUCTIVE]
        # The server saved the turns with the routing decisions: the list says six messages.
        pane = pane_of(chat_app)
        await wait_for(pilot, lambda: pane.conversations and pane.conversations[0].message_count == 6,
                       what="the saved conversation")
        assert pane.conversations[0].title == FRUSTRATED


async def test_persona_choice_and_at_prefix_override_routing(chat_app):
    async with chat_app.run_test(size=SIZE) as pilot:
        pane = await chat_ready(pilot)
        answer = await send(pilot, "@aviva I'm so frustrated with this")
        assert answer.persona == "aviva" and "@aviva" in answer.routing["reason"]
        await pilot.press("ctrl+r", "ctrl+r", "ctrl+r")  # auto -> Abi -> Abbey -> Aviva
        assert pane.persona == "aviva"
        await pilot.press("ctrl+r", "ctrl+r")  # -> auto -> Abi
        assert pane.persona == "abi"
        answer = await send(pilot, CODE)
        assert answer.persona == "abi"
        # The command palette offers the same choice.
        titles = [c.title for c in chat_app.get_system_commands(chat_app.screen)]
        assert {"Chat: persona Abbey", "Chat: new conversation", "Chat: export as Markdown"} <= set(titles)
        chat_app._pane_action("chat", "set_persona('abbey')")
        await wait_for(pilot, lambda: pane.persona == "abbey", what="the palette's choice")


async def test_escape_cancels_the_streaming_answer(chat_app):
    async with chat_app.run_test(size=SIZE) as pilot:
        pane = await chat_ready(pilot, model=STALLS, max_tokens=40)
        answer = await send(pilot, "tell me a long story please", wait=False)
        await wait_for(pilot, lambda: answer.tokens == 7, what="the first tokens")
        assert answer.status == "streaming"
        await pilot.press("escape")
        await wait_for(pilot, lambda: answer.status == "cancelled" and pane.streaming is None, what="cancelled")
        foot = text_of(answer.query_one(".answer-foot", Static))
        assert "cancelled: partial answer" in foot
        assert answer.text == "tell me a long story please tell"
        # The server stopped generating and kept the partial answer, marked cancelled.
        client = AbiClient(chat_app.client.url)
        try:
            conversation_id = pane.conversation_id
            assert conversation_id

            async def stored_status() -> str:
                _, messages = await client.conversation(conversation_id)
                return messages[-1].status

            for _ in range(50):
                if await stored_status() == "cancelled":
                    break
                await asyncio.sleep(0.05)
            _, messages = await client.conversation(conversation_id)
        finally:
            await client.close()
        assert messages[-1].status == "cancelled" and messages[-1].content == answer.text
        # Opened again, the stored answer carries the mark.
        pane.load_conversation(conversation_id)
        await wait_for(pilot, lambda: answers(chat_app) and answers(chat_app)[-1] is not answer, what="reloaded")
        reloaded = answers(chat_app)[-1]
        assert reloaded.incomplete and "cancelled" in text_of(reloaded.query_one(".answer-foot", Static))


async def test_ctrl_j_makes_a_new_line_and_enter_sends(chat_app):
    async with chat_app.run_test(size=SIZE) as pilot:
        pane = await chat_ready(pilot)
        box = pane.query_one(ChatInput)
        await pilot.press("h", "i", "ctrl+j", "y", "o")
        assert box.text == "hi\nyo"
        assert not answers(chat_app), "ctrl+j does not send"
        await pilot.press("enter")
        await wait_for(pilot, lambda: answers(chat_app) and answers(chat_app)[-1].status != "streaming",
                       what="answer")
        answer = answers(chat_app)[-1]
        assert answer.status == "done", (answer.status, answer.text, notes(chat_app))
        assert box.text == ""
        assert [u.text for u in pane.query(UserMessage).results(UserMessage)] == ["hi\nyo"]
        assert answers(chat_app)[-1].text.startswith("hi yo")
        await pilot.press("enter")  # an empty box sends nothing
        assert len(answers(chat_app)) == 1


async def test_a_fast_burst_of_keys_arrives_in_order(chat_app):
    """Keys sent at machine speed (no pause between them), starting outside the box: Enter and
    ctrl+j do not overtake the characters typed before them."""
    async with chat_app.run_test(size=SIZE) as pilot:
        pane = await chat_ready(pilot)
        await pilot.press("escape")
        assert not isinstance(chat_app.focused, ChatInput)
        keys = [*"write", "ctrl+j", *"code", "enter"]
        for key in keys:
            chat_app._driver.send_message(events.Key(key, "\n" if key == "ctrl+j" else None if key == "enter" else key))
        await wait_for(pilot, lambda: answers(chat_app) and answers(chat_app)[-1].status == "done", what="answer")
        assert [u.text for u in pane.query(UserMessage).results(UserMessage)] == ["write\ncode"]


async def test_pane_keys_work_outside_the_box_and_typing_starts_a_message(chat_app):
    async with chat_app.run_test(size=SIZE) as pilot:
        pane = await chat_ready(pilot)
        await pilot.press("escape")  # leaves the message box for the conversation list
        assert pilot.app.focused is pane.query_one("#chat-conversations", OptionList)
        await pilot.press("2")
        assert chat_app.active_pane == "models"
        await pilot.press("1")
        await wait_for(pilot, lambda: chat_app.active_pane == "chat" and not isinstance(chat_app.focused, ChatInput),
                       what="back on the chat pane")
        await pilot.press("h", "i")
        box = pane.query_one(ChatInput)
        assert chat_app.focused is box and box.text == "hi"
        await pilot.press("2")  # in the box, digits are text
        assert box.text == "hi2" and chat_app.active_pane == "chat"


async def test_conversations_new_open_rename_export_copy_delete(chat_app, abi_home):
    async with chat_app.run_test(size=SIZE) as pilot:
        pane = await chat_ready(pilot)
        first = await send(pilot, CODE)
        first_id = pane.conversation_id
        await pilot.press("ctrl+g")
        assert chat_app.clipboard == first.text and "Copied" in notes(chat_app)

        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: pane.conversation_id not in (None, first_id), what="a new conversation")
        assert not answers(chat_app)
        await send(pilot, FRUSTRATED)
        await wait_for(pilot, lambda: len(pane.conversations) == 2 and pane.conversations[0].message_count == 2,
                       what="two conversations")

        # Open the first one from the list.
        listing = pane.query_one("#chat-conversations", OptionList)
        listing.focus()
        listing.highlighted = [c.id for c in pane.conversations].index(first_id)
        await pilot.press("enter")
        await wait_for(pilot, lambda: pane.conversation_id == first_id and answers(chat_app), what="opened")
        assert answers(chat_app)[0].persona == "aviva" and answers(chat_app)[0].text == first.text

        await pilot.press("f2", "escape")  # Esc keeps the title
        assert not isinstance(chat_app.screen, TitlePrompt)
        await pilot.press("f2")
        assert isinstance(chat_app.screen, TitlePrompt)
        chat_app.screen.query_one(Input).value = "CSV parsing"
        await pilot.press("enter")
        await wait_for(pilot, lambda: any(c.title == "CSV parsing" for c in pane.conversations), what="renamed")

        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: pane.last_export is not None and pane.last_export.exists(), what="export")
        assert pane.last_export.parent == abi_home / "exports"
        exported = pane.last_export.read_text()
        assert exported.startswith("# CSV parsing") and "Aviva" in exported
        assert str(pane.last_export) in notes(chat_app)

        await pilot.press("f8")
        assert isinstance(chat_app.screen, ConfirmDialog)
        await pilot.press("y")
        await wait_for(pilot, lambda: len(pane.conversations) == 1 and pane.conversation_id is None, what="deleted")
        assert first_id not in [c.id for c in pane.conversations]
        assert not answers(chat_app)


async def test_follows_the_answer_only_near_the_bottom(chat_app):
    async with chat_app.run_test(size=SIZE) as pilot:
        await chat_ready(pilot, model="mock/constant_rate?min_ms=8&max_ms=8", max_tokens=600)
        log = pane_of(chat_app).query_one(ChatLog)
        answer = await send(pilot, "write me a long poem about autumn leaves", wait=False)
        await wait_for(pilot, lambda: log.max_scroll_y > 3 and log.scroll_y == log.max_scroll_y, what="following")
        log.scroll_home(animate=False)  # the user scrolls up to read
        grown = log.max_scroll_y + 3
        await wait_for(pilot, lambda: log.max_scroll_y >= grown, what="more text")
        assert log.scroll_y == 0, "scrolled up: the answer does not pull the view down"
        log.scroll_end(animate=False)  # back at the bottom: follow again
        grown = log.max_scroll_y + 3
        await wait_for(pilot, lambda: log.max_scroll_y >= grown, what="more text")
        await wait_for(pilot, lambda: log.scroll_y >= log.max_scroll_y - 1, what="following again")
        assert answer.status == "streaming"
        await pilot.press("escape")
        await wait_for(pilot, lambda: answer.status == "cancelled", what="cancelled")


# ------------------------------------------------------------------------------------ snapshots
def chat_shot(snap_compare, app: AbiApp, before: Any = None, streams: int = 0, **options: Any) -> bool:
    async def run_before(pilot: Any) -> None:
        await chat_ready(pilot, **options)
        if before is not None:
            await before(pilot)
        await settle(pilot, streams)

    return snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_chat_empty(snap_compare, chat_app):
    assert chat_shot(snap_compare, chat_app)


def test_chat_three_personas(snap_compare, chat_app):
    async def talk(pilot: Any) -> None:
        for message in (FRUSTRATED, CODE, DESTRUCTIVE):
            await send(pilot, message)

    assert chat_shot(snap_compare, chat_app, talk, max_tokens=10)


def test_chat_streaming(snap_compare, chat_app):
    async def streaming(pilot: Any) -> None:
        await send(pilot, "Explain how **streaming** works in `abi`, step by step", wait=False)
        answer = answers(pilot.app)[-1]
        await wait_for(pilot, lambda: answer.tokens == 7, what="the first burst")

    assert chat_shot(snap_compare, chat_app, streaming, streams=1, model=STALLS, max_tokens=40)


def test_chat_conversation_list(snap_compare, chat_server, make_app):
    """Three saved conversations (one renamed, one with a cancelled answer), the list focused."""

    async def fill() -> None:
        async with AbiClient(chat_server.url) as client:
            for text in (CODE, "hello there, how are you today?"):
                async with client.chat(text, model=FAST, max_tokens=8) as stream:
                    async for _ in stream:
                        pass
            renamed = (await client.conversations())[0]
            await client.rename_conversation(renamed.id, "Small talk")
            # Cancelled in the mock's pause after seven tokens (short: the mock ends a cancelled
            # stream only when the pause is over, and the header would count it).
            async with client.chat(FRUSTRATED, model="mock/burst?min_ms=1&max_ms=300", max_tokens=40) as stream:
                tokens = 0
                async for event in stream:
                    tokens += event.type == "token"
                    if tokens == 7:
                        await stream.cancel()
            for _ in range(100):  # the server marks it once it notices the closed stream
                conversation = (await client.conversations())[0]
                _, messages = await client.conversation(conversation.id)
                if messages[-1].status == "cancelled" and not (await client.health()).active_streams:
                    break
                await asyncio.sleep(0.05)

    asyncio.run(fill())
    app = make_app(chat_server)

    async def open_first(pilot: Any) -> None:
        pane = pane_of(pilot.app)
        await wait_for(pilot, lambda: len(pane.conversations) == 3, what="three conversations")
        await pilot.press("escape")  # leave the message box: the list has the focus
        listing = pane.query_one("#chat-conversations", OptionList)
        assert pilot.app.focused is listing
        listing.highlighted = 0
        await pilot.press("enter")
        await wait_for(pilot, lambda: pane.conversation_id == pane.conversations[0].id and answers(pilot.app),
                       what="the conversation open")

    assert chat_shot(snap_compare, app, open_first)
