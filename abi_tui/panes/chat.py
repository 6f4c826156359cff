"""Chat pane: conversations with the Abi, Abbey and Aviva personas on the active model.

Everything goes through the server's persona API (`AbiClient.chat`, the conversation routes):
the server routes each message (or honours the persona chosen here, or an `@persona` prefix),
saves both turns as the answer streams, and keeps a cut-off answer marked cancelled or
incomplete. The pane only shows what the server said: the routing decision from `abi.start`,
the conversation from `abi.context`, tokens, and timings from `abi.end`.

The answer streams in a worker; Esc closes the stream (the server stops within a token). While
an answer streams the conversation cannot be switched: the answer belongs to the one on screen.
"""

from __future__ import annotations

import asyncio
import re
from contextlib import suppress
from pathlib import Path
from typing import Any, ClassVar

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.widgets import Input, OptionList, Select, Static, TextArea
from textual.widgets.option_list import Option

from abi_tui.client import ChatMessage, ClientError, ConversationInfo, PersonaChatStream
from abi_tui.connection import LinkStatus
from abi_tui.panes.base import Pane
from abi_tui.widgets.chat_view import (
    AnswerMessage,
    ChatInput,
    ChatLog,
    PersonaLook,
    UserMessage,
    persona_look,
)
from abi_tui.widgets.memory_list import MemoryList

PERSONA_CHOICES: tuple[tuple[str, str], ...] = (("Auto", "auto"), ("Abi", "abi"), ("Abbey", "abbey"),
                                                ("Aviva", "aviva"))
ROUTE_PREVIEW_S = 0.35  # quiet time after typing before the routing preview asks the server
DEFAULT_HINT = "Enter sends · ctrl+j new line · Esc cancels · @abi @abbey @aviva picks a persona"
EMPTY_TEXT = ("No messages yet. Start typing and press Enter to send.\n\n"
              "Auto routes each message: Abi for safety and routing questions, Abbey when you are stuck, "
              "stressed or learning, Aviva for technical work. Pick one with ctrl+r or start a message "
              "with @abi, @abbey or @aviva.")


# Offered by the first-run hint (ctrl+b), never downloaded unasked: a BERT-style embedding model
# trained for similarity (84 MB), far better at recall than the chat model's hidden states.
EMBEDDING_MODEL = "nomic-ai/nomic-embed-text-v1.5-GGUF:Q4_K_M"
EMBEDDING_HINT = ("Memory recalls what you said in earlier chats. It uses the chat model's own embeddings; "
                  f"ctrl+b downloads a dedicated embedding model ({EMBEDDING_MODEL}, 84 MB) for better recall.")


def export_name(title: str, conversation_id: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:48] or "chat"
    return f"{slug}-{conversation_id[:8]}.md"


class TitlePrompt(ModalScreen[str | None]):
    """Asks for a conversation title: Enter saves, Esc keeps the old one."""

    DEFAULT_CSS = """
    TitlePrompt {
        align: center middle;
    }
    TitlePrompt > Vertical {
        width: 64;
        height: auto;
        border: thick $primary;
        background: $surface;
        padding: 1 2;
    }
    TitlePrompt .title {
        text-style: bold;
        margin-bottom: 1;
    }
    TitlePrompt .hint {
        color: $text-muted;
        margin-top: 1;
    }
    """

    def __init__(self, title: str, value: str) -> None:
        super().__init__()
        self.title_text = title
        self.value = value

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, classes="title")
            yield Input(self.value, id="title-input", select_on_focus=True)
            yield Static("Enter saves · Esc cancels", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip() or None)

    def key_escape(self) -> None:
        self.dismiss(None)


class ChatPane(Pane):
    PANE_ID = "chat"
    TITLE = "Chat"
    BINDINGS: ClassVar[list[Binding]] = [
        # Enter and ctrl+j act only in the message box, which runs them in order with the typing
        # (ChatInput); elsewhere check_action passes them on (Enter opens a conversation).
        Binding("enter", "send", "Send", id="chat-send", show=False),
        Binding("ctrl+j", "newline", "New line", id="chat-newline", show=False),
        Binding("escape", "cancel", "Cancel", id="chat-cancel"),
        Binding("ctrl+n", "new_conversation", "New chat", id="chat-new"),
        Binding("ctrl+r", "cycle_persona", "Persona", id="chat-persona"),
        Binding("ctrl+g", "copy", "Copy answer", id="chat-copy"),
        Binding("ctrl+s", "export", "Export", id="chat-export"),
        Binding("f2", "rename", "Rename", id="chat-rename", show=False),
        Binding("f8,delete", "delete", "Delete chat", id="chat-delete", show=False),
        Binding("ctrl+o", "forget_memory", "Forget memory", id="chat-forget-memory", show=False),
        Binding("ctrl+b", "get_embedding_model", "Embedding model", id="chat-embed-model", show=False),
    ]
    COMMANDS = (
        ("Chat: new conversation", "Start an empty conversation", "new_conversation"),
        ("Chat: rename the conversation", "Give the open conversation a title", "rename"),
        ("Chat: delete the conversation", "Delete the open conversation from the server (asks first)", "delete"),
        ("Chat: export as Markdown", "Save the open conversation to $ABI_HOME/exports", "export"),
        ("Chat: copy the answer", "Copy the selected (or last) answer to the clipboard", "copy"),
        ("Chat: cancel the answer", "Stop the answer that is streaming (the partial text is kept)", "cancel"),
        ("Chat: persona auto", "Let the router pick the persona for each message", "set_persona('auto')"),
        ("Chat: persona Abi", "Send the next messages to Abi, the router and moderator", "set_persona('abi')"),
        ("Chat: persona Abbey", "Send the next messages to Abbey, the empathetic polymath", "set_persona('abbey')"),
        ("Chat: persona Aviva", "Send the next messages to Aviva, the direct expert", "set_persona('aviva')"),
        ("Chat: reload conversations", "List the saved conversations again", "refresh"),
        ("Chat: forget a memory", "Forget the highlighted (or only) memory recalled for the last answer",
         "forget_memory"),
        ("Chat: download the embedding model", f"Download {EMBEDDING_MODEL} for better memory recall",
         "get_embedding_model"),
    )

    DEFAULT_CSS = """
    ChatPane {
        layout: horizontal;
    }
    ChatPane #chat-sidebar {
        width: 30;
        border: round $panel;
    }
    Screen.-narrow ChatPane #chat-sidebar {
        width: 24;
    }
    ChatPane #chat-conversations {
        height: 1fr;
        border: none;
        background: transparent;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    ChatPane #chat-no-conversations {
        color: $text-muted;
        padding: 0 1;
    }
    ChatPane #chat-main {
        width: 1fr;
    }
    ChatPane #chat-log {
        border: round $panel;
    }
    ChatPane #chat-compose {
        height: auto;
    }
    ChatPane #chat-persona {
        width: 12;
        margin: 1 1 0 0;
    }
    ChatPane #chat-hint {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    """

    # Extra fields for every chat request (max_tokens, temperature, a pinned model). Empty: the
    # active model with the persona's sampling. Tests pin mock models with known timing here.
    request_options: dict[str, Any]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request_options = {}
        self.conversation_id: str | None = None
        self.conversation: ConversationInfo | None = None
        self.conversations: list[ConversationInfo] = []
        self.personas: dict[str, PersonaLook] = {}
        self.persona = "auto"
        self.streaming: AnswerMessage | None = None
        self.selected: AnswerMessage | None = None
        self.loaded_once = False  # the conversation list has been read from the server
        self._stream: PersonaChatStream | None = None
        self._cancel_requested = False
        self._was_up = False
        self._route_timer: Timer | None = None
        self.last_export: Path | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="chat-sidebar") as sidebar:
            sidebar.border_title = "Conversations"
            sidebar.border_subtitle = "F2 rename · F8 delete"
            yield Static("No saved conversations yet.", id="chat-no-conversations")
            yield OptionList(id="chat-conversations")
        with Vertical(id="chat-main"):
            with ChatLog(id="chat-log") as log:
                log.border_title = "New chat"
                yield Static(EMPTY_TEXT, classes="chat-empty")
            with Horizontal(id="chat-compose"):
                yield Select(PERSONA_CHOICES, value="auto", allow_blank=False, compact=True, id="chat-persona",
                             type_to_search=False,  # letters start a message (on_key)
                             tooltip="Persona for the next messages (ctrl+r cycles)")
                yield ChatInput(id="chat-input", soft_wrap=True, show_line_numbers=False,
                                placeholder="Message (Enter sends, ctrl+j new line)")
            yield Static(DEFAULT_HINT, id="chat-hint")

    def on_mount(self) -> None:
        # A blinking cursor makes two screenshots of the same screen differ.
        self.query_one(ChatInput).cursor_blink = not self.fmt.frozen
        self.server_status(self.link)

    # -- the pane contract ------------------------------------------------------------------------
    def server_status(self, status: LinkStatus) -> None:
        up = status.connected
        if up and not self._was_up:
            self.load_personas()
            self.refresh_conversations()
            self.offer_embedding_model()
        self._was_up = up

    def pane_shown(self) -> None:
        # The focus stays where the app puts it (the conversation list), not in the message box:
        # there the dashboard's keys (1-5, m, ?) would type text. Typing a letter moves to the box.
        if self.link.connected and not self.loaded_once:
            self.refresh_conversations()

    async def on_key(self, event: events.Key) -> None:
        """A printable key that nothing binds, pressed outside the message box, starts a message.
        The box stops the keys typed in it; what lands here was sent before the focus moved to it
        (a burst), so Enter and ctrl+j run here too, in order with those characters."""
        active = self.screen.active_bindings.get(event.key)
        if event.is_printable and event.character and active is None:
            event.stop()
            event.prevent_default()
            self.write_in_box(event.character)
        elif active is not None and active.binding.id in ChatInput.SENDS and isinstance(self.app.focused, ChatInput):
            event.stop()
            event.prevent_default()
            await self.app.run_action(active.binding.action, active.node)

    def on_paste(self, event: events.Paste) -> None:
        if event.text and not isinstance(self.app.focused, TextArea | Input):
            event.stop()
            self.write_in_box(event.text)

    def write_in_box(self, text: str) -> None:
        box = self.query_one(ChatInput)
        # Focus now, not after a refresh (Widget.focus): the next keys must go to the box.
        self.screen.set_focus(box)
        box.insert(text)

    # -- keys -------------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        typing = isinstance(self.app.focused, ChatInput)
        if action in ("send", "newline"):
            return typing  # False passes the key on (Enter selects in the conversation list)
        if action == "cancel":
            return self.streaming is not None or typing
        return True

    def action_newline(self) -> None:
        self.query_one(ChatInput).insert("\n")

    def action_cancel(self) -> None:
        if self.streaming is None:
            # Leave the message box: the pane keys (1-5, m, ?) work again outside it.
            self.query_one("#chat-conversations", OptionList).focus()
            return
        if self._stream is not None and not self._cancel_requested:
            self._cancel_requested = True
            self.streaming.cancelling()
            self.run_worker(self._stream.cancel(), group="chat-cancel")

    def action_cycle_persona(self) -> None:
        values = [value for _, value in PERSONA_CHOICES]
        self.action_set_persona(values[(values.index(self.persona) + 1) % len(values)])

    def action_set_persona(self, persona: str) -> None:
        self.persona = persona  # now: a second ctrl+r may come before Select.Changed
        self.query_one("#chat-persona", Select).value = persona

    @on(Select.Changed, "#chat-persona")
    def persona_changed(self, event: Select.Changed) -> None:
        self.persona = str(event.value)
        self.schedule_route_preview()

    def action_refresh(self) -> None:
        self.refresh_conversations()

    # -- personas ---------------------------------------------------------------------------------
    @work(exclusive=True, group="chat-personas")
    async def load_personas(self) -> None:
        if self.client is None:
            return
        try:
            catalogue = await self.client.personas()
        except ClientError:
            return  # answers then show plain badges; the next connection tries again
        self.personas.clear()
        self.personas.update({str(p["id"]): PersonaLook(str(p.get("name") or p["id"]), str(p.get("color") or "$accent"))
                              for p in catalogue if p.get("id")})
        with suppress(NoMatches):
            for answer in self.query_one(ChatLog).answers():
                answer.restyle()

    # -- conversations ----------------------------------------------------------------------------
    @work(exclusive=True, group="chat-list")
    async def refresh_conversations(self) -> None:
        if self.client is None:
            return
        try:
            conversations = await self.client.conversations()
        except ClientError as exc:
            self.notify(exc.message, title="Cannot list conversations", severity="warning")
            return
        with suppress(NoMatches):
            self.show_conversations(conversations)
            self.loaded_once = True

    def show_conversations(self, conversations: list[ConversationInfo]) -> None:
        self.conversations = conversations
        listing = self.query_one("#chat-conversations", OptionList)
        highlighted = listing.highlighted_option.id if listing.highlighted_option else None
        listing.clear_options()
        self.query_one("#chat-no-conversations").display = not conversations
        for item in conversations:
            current = item.id == self.conversation_id
            count = f"{item.message_count} message{'s' if item.message_count != 1 else ''}"
            prompt = Content.assemble(("● " if current else "  ", "$accent"),
                                      (item.title, "bold" if current else ""), "\n",
                                      (f"  {count} · {self.fmt.clock(item.updated)}", "$text-muted"))
            listing.add_option(Option(prompt, id=item.id))
        ids = [c.id for c in conversations]
        target = self.conversation_id if self.conversation_id in ids else highlighted
        if target in ids:
            listing.highlighted = ids.index(target)
        if self.conversation_id in ids:
            self.conversation = conversations[ids.index(self.conversation_id)]
            self.query_one(ChatLog).border_title = self.conversation.title

    @on(OptionList.OptionSelected, "#chat-conversations")
    def conversation_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.open_conversation(event.option.id)

    def open_conversation(self, conversation_id: str) -> None:
        if self.streaming is not None:
            self.notify("an answer is streaming: wait for it, or press Esc to cancel it", severity="warning")
            return
        self.load_conversation(conversation_id)

    @work(exclusive=True, group="chat-load")
    async def load_conversation(self, conversation_id: str) -> None:
        if self.client is None:
            return
        try:
            conversation, messages = await self.client.conversation(conversation_id)
        except ClientError as exc:
            self.notify(exc.message, title="Cannot open the conversation", severity="error")
            self.refresh_conversations()
            return
        with suppress(NoMatches):
            await self.show_conversation(conversation, messages)

    async def show_conversation(self, conversation: ConversationInfo | None, messages: list[ChatMessage]) -> None:
        self.conversation = conversation
        self.conversation_id = conversation.id if conversation else None
        self.selected = None
        log = self.query_one(ChatLog)
        log.border_title = conversation.title if conversation else "New chat"
        await log.remove_children()
        widgets: list[Static | AnswerMessage] = []
        for message in messages:
            if message.role == "user":
                widgets.append(UserMessage(message.content))
            elif message.role == "assistant":
                widgets.append(AnswerMessage.saved(self.fmt, self.personas, message))
        if not widgets:
            widgets.append(Static(EMPTY_TEXT, classes="chat-empty"))
        await log.mount_all(widgets)
        log.anchor(bool(messages))  # anchored content sits at the bottom: the empty note at the top
        self.show_conversations(self.conversations)

    def target_conversation(self) -> ConversationInfo | None:
        """The highlighted conversation while the list has the focus, else the open one."""
        listing = self.query_one("#chat-conversations", OptionList)
        if self.app.focused is listing and listing.highlighted_option is not None:
            wanted = listing.highlighted_option.id
            return next((c for c in self.conversations if c.id == wanted), None)
        return self.conversation

    def action_new_conversation(self) -> None:
        if self.streaming is not None:
            self.notify("an answer is streaming: wait for it, or press Esc to cancel it", severity="warning")
            return
        if self.conversation is not None and not self.query_one(ChatLog).query("UserMessage, AnswerMessage"):
            self.query_one(ChatInput).focus()  # the open one is still empty: no second "New chat"
            return
        self.new_conversation()

    @work(exclusive=True, group="chat-new")
    async def new_conversation(self) -> None:
        if self.client is None:
            self.notify("the server is not up yet", severity="warning")
            return
        try:
            conversation = await self.client.create_conversation()
        except ClientError as exc:
            self.notify(exc.message, title="Cannot start a conversation", severity="error")
            return
        with suppress(NoMatches):
            self.conversations.insert(0, conversation)
            await self.show_conversation(conversation, [])
            self.query_one(ChatInput).focus()
            self.refresh_conversations()

    def action_rename(self) -> None:
        conversation = self.target_conversation()
        if conversation is None:
            self.notify("no conversation to rename: send a message or press ctrl+n first", severity="warning")
            return

        def chosen(title: str | None) -> None:
            if title and title != conversation.title:
                self.rename_conversation(conversation.id, title)

        self.app.push_screen(TitlePrompt("Rename the conversation", conversation.title), chosen)

    @work(group="chat-rename")
    async def rename_conversation(self, conversation_id: str, title: str) -> None:
        assert self.client is not None
        try:
            await self.client.rename_conversation(conversation_id, title)
        except ClientError as exc:
            self.notify(exc.message, title="Cannot rename", severity="error")
            return
        self.notify(f"Renamed to “{title}”")
        self.refresh_conversations()

    def action_delete(self) -> None:
        from abi_tui.dialogs.confirm import ConfirmDialog

        conversation = self.target_conversation()
        if conversation is None:
            self.notify("no conversation to delete", severity="warning")
            return
        if self.streaming is not None and conversation.id == self.conversation_id:
            self.notify("an answer is streaming in this conversation: Esc cancels it first", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.delete_conversation(conversation.id, conversation.title)

        count = f"{conversation.message_count} message{'s' if conversation.message_count != 1 else ''}"
        self.app.push_screen(ConfirmDialog(f"Delete “{conversation.title}”?",
                                           f"{count} are deleted from the server's chat history. "
                                           "This cannot be undone.", confirm_label="Delete"), answered)

    @work(group="chat-delete")
    async def delete_conversation(self, conversation_id: str, title: str) -> None:
        assert self.client is not None
        try:
            await self.client.delete_conversation(conversation_id)
        except ClientError as exc:
            self.notify(exc.message, title="Cannot delete", severity="error")
            return
        self.notify(f"Deleted “{title}”")
        with suppress(NoMatches):
            self.conversations = [c for c in self.conversations if c.id != conversation_id]
            if conversation_id == self.conversation_id:
                await self.show_conversation(None, [])
            self.refresh_conversations()

    def action_export(self) -> None:
        conversation = self.target_conversation()
        if conversation is None:
            self.notify("no conversation to export", severity="warning")
            return
        self.export_conversation(conversation)

    @work(group="chat-export")
    async def export_conversation(self, conversation: ConversationInfo) -> None:
        assert self.client is not None
        try:
            text = await self.client.export_conversation(conversation.id)
        except ClientError as exc:
            self.notify(exc.message, title="Cannot export", severity="error")
            return
        path = self.abi.settings.home / "exports" / export_name(conversation.title, conversation.id)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            self.notify(f"{path}: {exc.strerror or exc}", title="Cannot write the export", severity="error")
            return
        self.last_export = path
        self.notify(str(path), title=f"Exported “{conversation.title}”", timeout=10)

    # -- answers ----------------------------------------------------------------------------------
    def action_copy(self) -> None:
        answers = [a for a in self.query_one(ChatLog).answers() if a.text]
        answer = self.selected if self.selected in answers else (answers[-1] if answers else None)
        if answer is None:
            self.notify("no answer to copy yet", severity="warning")
            return
        self.copy_answer(answer)

    def copy_answer(self, answer: AnswerMessage) -> None:
        self.app.copy_to_clipboard(answer.text)
        self.notify(f"{answer.look.name}'s answer ({len(answer.text)} characters) is on the clipboard",
                    title="Copied")

    @on(AnswerMessage.Clicked)
    def answer_clicked(self, event: AnswerMessage.Clicked) -> None:
        if self.selected is not None:
            self.selected.remove_class("-selected")
        self.selected = event.answer
        event.answer.add_class("-selected")
        if event.answer.text:
            self.copy_answer(event.answer)

    def action_send(self) -> None:
        box = self.query_one(ChatInput)
        text = box.text.strip()
        if not text:
            return
        if self.streaming is not None:
            self.notify("an answer is still streaming: wait for it, or press Esc to cancel it", severity="warning")
            return
        if self.client is None or not self.link.connected:
            self.notify("the server is not reachable; your message stays in the box", severity="warning")
            return
        box.clear()
        self.set_hint(DEFAULT_HINT)
        log = self.query_one(ChatLog)
        for empty in log.query(".chat-empty"):
            empty.remove()
        answer = AnswerMessage(self.fmt, self.personas)
        log.mount_all([UserMessage(text), answer])
        log.anchor()  # sending means reading the answer: follow it
        self.streaming, self._cancel_requested = answer, False
        self.stream_answer(text, self.persona, answer)

    @work(group="chat-answer")
    async def stream_answer(self, text: str, persona: str, answer: AnswerMessage) -> None:
        assert self.client is not None
        status, error = "incomplete", None
        end: dict[str, Any] = {}
        stream = self.client.chat(text, persona=persona, conversation_id=self.conversation_id,
                                  **self.request_options)
        self._stream = stream
        try:
            async with stream:
                async for event in stream:
                    if event.type == "token":
                        answer.append(event.text)
                    elif event.type == "start":
                        answer.start(event.data.get("persona"), event.data.get("routing"), event.data.get("model"))
                    elif event.type == "context":
                        self.conversation_started(str(event.data.get("conversation_id") or ""))
                        await self.show_memories(answer, event.data.get("memory") or [])
                    elif event.type == "end":
                        status, end = "done", event.data
                    elif event.type == "error":
                        status, error = "error", str(event.data.get("message") or "the server failed mid-answer")
                    elif event.type == "cancelled":
                        status = "cancelled"
        except ClientError as exc:
            status, error = "error", exc.message
            if not self._cancel_requested:
                self.notify(exc.message, title="The answer failed", severity="error", timeout=10)
        finally:
            self._stream = None
        if self._cancel_requested and status != "done":
            status = "cancelled"
        await answer.finish(status, timings=end.get("timings"), usage=end.get("usage"),
                            finish_reason=end.get("finish_reason"), error=error)
        self.streaming = None
        self.refresh_conversations()  # counts, order, and the title the first message gave

    def conversation_started(self, conversation_id: str) -> None:
        """`abi.context`: the server saved the turn here (a new conversation on the first message)."""
        if conversation_id and conversation_id != self.conversation_id:
            self.conversation_id = conversation_id
            self.refresh_conversations()

    # -- memory -----------------------------------------------------------------------------------
    async def show_memories(self, answer: AnswerMessage, memories: list[dict[str, Any]]) -> None:
        """The memories recalled for this answer, just above it."""
        if memories and answer.parent is not None:
            await answer.parent.mount(MemoryList(self.fmt, memories), before=answer)

    def action_forget_memory(self) -> None:
        lists = list(self.query(MemoryList).results(MemoryList))
        focused = self.app.focused
        target = focused if isinstance(focused, MemoryList) else (lists[-1] if lists else None)
        item_id = target.highlighted_id() if target is not None else None
        if target is None or item_id is None:
            self.notify("no memory to forget: the last answer recalled none (or pick one in its list)",
                        severity="warning")
            return
        self.forget_memory(target, item_id)

    @on(MemoryList.Forget)
    def memory_forget_asked(self, event: MemoryList.Forget) -> None:
        self.forget_memory(event.memories, event.item_id)

    @on(MemoryList.Open)
    def memory_source_asked(self, event: MemoryList.Open) -> None:
        self.open_conversation(event.conversation_id)

    @work(group="chat-memory")
    async def forget_memory(self, memories: MemoryList, item_id: str) -> None:
        if self.client is None:
            return
        try:
            await self.client.forget_memory(item_id)
        except ClientError as exc:
            if exc.status != 404:  # 404: already forgotten, which is what was asked
                self.notify(exc.message, title="Cannot forget the memory", severity="error")
                return
        memories.mark_forgotten(item_id)
        self.notify("forgotten: it will not be recalled again", timeout=3)

    @work(exclusive=True, group="chat-memory-hint")
    async def offer_embedding_model(self) -> None:
        """First run (no conversations yet, no dedicated embedding model): say what ctrl+b does."""
        if self.client is None:
            return
        try:
            status = await self.client.memory_status()
        except ClientError:
            return
        with suppress(NoMatches):
            log = self.query_one(ChatLog)
            if not status.get("dedicated") and log.query(".chat-empty") and not log.query(".chat-memory-hint"):
                await log.mount(Static(EMBEDDING_HINT, classes="chat-empty chat-memory-hint"))

    def action_get_embedding_model(self) -> None:
        self.pull_embedding_model()

    @work(exclusive=True, group="chat-embedding-pull")
    async def pull_embedding_model(self) -> None:
        """Only on ctrl+b: download it through the server, then say how to use it."""
        if self.client is None:
            return
        self.notify(f"downloading {EMBEDDING_MODEL}…", timeout=3)
        last = None
        try:
            async for progress in self.client.pull(EMBEDDING_MODEL):
                last = progress
        except ClientError as exc:
            self.notify(exc.message, title="Cannot download the embedding model", severity="error")
            return
        if last is None or last.state != "done":
            self.notify(last.error or last.message or "the download did not finish" if last else "no progress",
                        title="Embedding model", severity="error")
            return
        self.notify(f"set vector_store.embedding_model = \"{last.name}\" in config.toml and restart; "
                    "then `abi memory reembed` moves memory to it", title="Embedding model downloaded", timeout=20)

    # -- routing preview --------------------------------------------------------------------------
    @on(TextArea.Changed, "#chat-input")
    def input_changed(self, event: TextArea.Changed) -> None:
        self.schedule_route_preview()

    def schedule_route_preview(self) -> None:
        if self._route_timer is not None:
            self._route_timer.stop()
        self._route_timer = self.set_timer(ROUTE_PREVIEW_S, self.route_preview)

    def set_hint(self, content: str | Content) -> None:
        self.query_one("#chat-hint", Static).update(content)

    @work(exclusive=True, group="chat-route")
    async def route_preview(self) -> None:
        """Who would answer the message being typed, and why (the server's router, no generation)."""
        text = self.query_one(ChatInput).text.strip()
        if not text or self.client is None or not self.link.connected:
            self.set_hint(DEFAULT_HINT)
            return
        if self.persona != "auto" and not text.startswith("@"):
            self.set_hint(Content.assemble(("→ ", "$text-muted"), (persona_look(self.personas, self.persona).name, "bold"),
                                           ("  answers every message (ctrl+r changes)", "$text-muted")))
            return
        previous = next((a.persona for a in reversed(self.query_one(ChatLog).answers()) if a.persona), None)
        try:
            decision = await self.client.route(text, previous=previous)
        except ClientError:
            self.set_hint(DEFAULT_HINT)
            return
        look = persona_look(self.personas, decision.persona)
        reason = decision.reason.removeprefix(f"{look.name}: ")
        with suppress(NoMatches):
            if self.query_one(ChatInput).text.strip() == text:
                self.set_hint(Content.assemble(("→ ", "$text-muted"), (look.name, f"bold {look.color}"),
                                               (f"  {reason}", "$text-muted")))
