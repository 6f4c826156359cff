"""The memories an answer was given: what was recalled from earlier chats, and a key to forget.

One row per recalled item (`abi.context` → `memory`): the sentence, whether the user said it or
an answer did, and when. Enter opens the conversation it came from; `x` (or ctrl+o in the Chat
pane) forgets it on the server, and the row stays, struck through, so the list does not jump.
"""

from __future__ import annotations

from typing import Any, ClassVar

from textual.binding import Binding
from textual.content import Content
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from abi_tui.formatting import Formatter


class MemoryList(OptionList):
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("x", "forget", "Forget memory", id="chat-memory-forget"),
    ]

    DEFAULT_CSS = """
    MemoryList {
        height: auto;
        max-height: 7;
        margin: 1 0 0 0;
        padding: 0 1;
        border: none;
        border-left: thick $warning 60%;
        background: transparent;
        color: $text-muted;
    }
    MemoryList:focus {
        background: $boost;
    }
    """

    class Forget(Message):
        """The user asked to forget one recalled item."""

        def __init__(self, memories: MemoryList, item_id: str) -> None:
            super().__init__()
            self.memories = memories
            self.item_id = item_id

    class Open(Message):
        """The user asked for the conversation a recalled item came from."""

        def __init__(self, conversation_id: str) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    def __init__(self, fmt: Formatter, memories: list[dict[str, Any]], **kwargs: Any) -> None:
        self.fmt = fmt
        self.memories = [m for m in memories if m.get("id")]
        self.forgotten: set[str] = set()
        super().__init__(*[self._option(m) for m in self.memories], **kwargs)
        self.border_title = None
        self.tooltip = "Recalled from earlier chats · Enter opens the chat it came from · x forgets it"

    def _option(self, memory: dict[str, Any]) -> Option:
        gone = memory["id"] in self.forgotten
        who = "you said" if memory.get("role") == "user" else "an answer said"
        when = self.fmt.clock(memory.get("created")) if memory.get("created") else ""
        text = str(memory.get("text", ""))
        return Option(Content.assemble(
            ("↺ ", "$warning"), (text, "strike" if gone else ""),
            (f"  {who}{' · ' + when if when else ''}{' · forgotten' if gone else ''}", "italic")),
            id=memory["id"], disabled=gone)

    def highlighted_id(self) -> str | None:
        option = self.highlighted_option
        if option is not None and option.id not in self.forgotten:
            return option.id
        live = [m["id"] for m in self.memories if m["id"] not in self.forgotten]
        return live[0] if len(live) == 1 else None

    def action_forget(self) -> None:
        item_id = self.highlighted_id()
        if item_id is not None:
            self.post_message(self.Forget(self, item_id))

    def mark_forgotten(self, item_id: str) -> None:
        self.forgotten.add(item_id)
        index = next((i for i, m in enumerate(self.memories) if m["id"] == item_id), None)
        if index is not None:
            self.replace_option_prompt_at_index(index, self._option(self.memories[index]).prompt)
            self.disable_option_at_index(index)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        memory = next((m for m in self.memories if m["id"] == event.option.id), None)
        if memory is not None and memory.get("conversation_id"):
            self.post_message(self.Open(str(memory["conversation_id"])))
