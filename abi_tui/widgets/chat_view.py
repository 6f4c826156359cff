"""The Chat pane's message view: the user's turns, persona answers streamed as Markdown, the
log that holds them and the message box.

An answer shows a persona badge in the persona's colour with the routing reason above the
text, and below it TTFT, tok/s, tokens and model, or a mark when it was cut off (cancelled,
incomplete, error: the server keeps the partial text). A streaming answer is drawn in frames,
at most FRAME_HZ a second however fast tokens arrive: the fragments of a frame go to Textual's
`MarkdownStream` in one write, which appends them (it re-parses only the last block, not the
whole answer). Rendering costs the dashboard's CPU; on a small machine that CPU is the model's.
The log is anchored to its end (Textual's `anchor()`): it follows a streaming answer while the
user is at the bottom, stops following when they scroll up, and follows again once they are
back at the bottom.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic
from typing import Any, ClassVar

from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.events import Click
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Markdown, Static, TextArea
from textual.widgets.markdown import MarkdownStream

from abi_tui.client import ChatMessage
from abi_tui.formatting import Formatter

FRAME_HZ = 10  # measured: 15 Hz cost ~12 % of a core while SmolLM2 streams, 8 Hz ~9 %
FRAME_S = 1 / FRAME_HZ
FROZEN_TOKENS_PER_S = 100.0  # snapshots: tok/s is timing, like the Formatter's frozen values
STATUS_TEXT = {
    "cancelled": "cancelled: partial answer",
    "incomplete": "incomplete: the answer was cut off",
    "error": "error",
}


@dataclass(frozen=True)
class PersonaLook:
    """How a persona is shown: its name and badge colour (from the server's catalogue)."""

    name: str
    color: str = "$accent"


def persona_look(personas: dict[str, PersonaLook], persona: str | None) -> PersonaLook:
    if persona and persona in personas:
        return personas[persona]
    return PersonaLook((persona or "assistant").capitalize())


def tokens_per_s(fmt: Formatter, value: float | None) -> str:
    if fmt.frozen:
        value = FROZEN_TOKENS_PER_S
    return "-" if not value else f"{value:.1f} tok/s"


class UserMessage(Static):
    """One of the user's messages, shown as typed (no markup, no Markdown)."""

    DEFAULT_CSS = """
    UserMessage {
        height: auto;
        margin: 1 0 0 0;
        padding: 0 1;
        border-left: thick $secondary;
        background: $boost;
    }
    """

    def __init__(self, text: str, **kwargs: Any) -> None:
        self.text = text
        super().__init__(Content.assemble(("You", "bold $secondary"), "\n", text), **kwargs)


class AnswerMessage(Vertical):
    """A persona's answer: badge and routing reason, the Markdown text, timings or a mark."""

    DEFAULT_CSS = """
    AnswerMessage {
        height: auto;
        margin: 1 0 0 0;
        padding: 0 0 0 1;
        border-left: thick $accent;
    }
    AnswerMessage.-selected {
        background: $boost;
    }
    AnswerMessage > .answer-head {
        height: auto;
    }
    AnswerMessage > Markdown {
        padding: 0;
        margin: 0;
    }
    AnswerMessage > Markdown > *:last-child {
        margin-bottom: 0;
    }
    AnswerMessage > .answer-foot {
        height: auto;
        color: $text-muted;
    }
    """

    class Clicked(Message):
        """The user clicked an answer (the pane copies it)."""

        def __init__(self, answer: AnswerMessage) -> None:
            super().__init__()
            self.answer = answer

    def __init__(self, fmt: Formatter, personas: dict[str, PersonaLook], *, text: str = "",
                 persona: str | None = None, routing: dict[str, Any] | None = None, model: str | None = None,
                 status: str = "streaming", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fmt = fmt
        self.personas = personas
        self.text = text
        self.persona = persona
        self.routing = routing or {}
        self.model = model
        self.status = status  # streaming, done, cancelled, incomplete, error
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.ttft_ms: float | None = None
        self.tokens_per_s: float | None = None
        self.tokens = 0
        self._stream: MarkdownStream | None = None
        self.cancel_requested = False
        self._pending: list[str] = []  # fragments not drawn yet
        self._frame_at = 0.0
        self._frame_timer: Timer | None = None

    @classmethod
    def saved(cls, fmt: Formatter, personas: dict[str, PersonaLook], message: ChatMessage) -> AnswerMessage:
        """An answer as the server stored it; one still `streaming` there is being written now
        (another client's, or ours before the reload)."""
        answer = cls(fmt, personas, text=message.content, persona=message.persona, routing=message.routing,
                     model=message.model, status=message.status)
        answer.ttft_ms, answer.tokens_per_s = message.ttft_ms, message.tokens_per_s
        answer.tokens = message.completion_tokens or 0
        answer.finish_reason, answer.error = message.finish_reason, message.error
        return answer

    def compose(self) -> ComposeResult:
        yield Static(self.render_head(), classes="answer-head")
        yield Markdown(self.text or None)
        yield Static(self.render_foot(), classes="answer-foot")

    def on_mount(self) -> None:
        self.restyle()

    # -- rendering ------------------------------------------------------------------------------
    @property
    def look(self) -> PersonaLook:
        return persona_look(self.personas, self.persona)

    def restyle(self) -> None:
        """Colours and texts again: after the persona is known, or the catalogue arrived."""
        look = self.look
        if self.persona and look.color.startswith("#"):
            self.styles.border_left = ("thick", look.color)
        self.query_one(".answer-head", Static).update(self.render_head())
        self.query_one(".answer-foot", Static).update(self.render_foot())

    def render_head(self) -> Content:
        if not self.persona:
            return Content.styled("routing...", "$text-muted")
        look = self.look
        badge_style = f"bold #1a1b26 on {look.color}" if look.color.startswith("#") else "bold reverse"
        parts: list[Content | str | tuple[str, str]] = [(f" {look.name} ", badge_style)]
        reason = str(self.routing.get("reason") or "")
        # The router names the persona first ("Aviva: ..."): the badge already says it.
        reason = reason.removeprefix(f"{look.name}: ")
        confidence = self.routing.get("confidence")
        if isinstance(confidence, int | float):
            parts += ["  ", (f"{confidence:.0%}", "$text-muted")]
        policy = self.routing.get("policy")
        if isinstance(policy, str) and policy:  # the rule the server enforced (a refusal, or crisis lines)
            parts += ["  ", (f" rule: {policy.replace('_', ' ')} ", "bold $text on $error-muted")]
        if reason:
            parts += ["  ", (reason, "italic $text-muted")]
        return Content.assemble(*parts)

    def render_foot(self) -> Content:
        if self.status == "streaming" and self.cancel_requested:
            return Content.styled("● cancelling...", "$warning")
        if self.status == "streaming":
            count = f" · {self.tokens} token{'s' if self.tokens != 1 else ''}" if self.tokens else ""
            return Content.styled(f"● streaming{count} · Esc cancels", "$accent")
        parts: list[Content | str | tuple[str, str]] = []
        if self.status in STATUS_TEXT:  # first: what matters most about this answer
            mark = "✘ " if self.status == "error" else "⚠ "
            text = STATUS_TEXT[self.status]
            if self.status == "error" and self.error:
                text += f": {self.error}"
            parts += [(mark + text, "bold $error" if self.status == "error" else "bold $warning"), "  "]
        facts = []
        if self.ttft_ms is not None:
            facts.append(f"TTFT {self.fmt.ms(self.ttft_ms)}")
        if self.tokens_per_s:
            facts.append(tokens_per_s(self.fmt, self.tokens_per_s))
        if self.tokens:
            limit = " (the limit)" if self.status == "done" and self.finish_reason == "length" else ""
            facts.append(f"{self.tokens} tokens{limit}")
        if self.model:
            facts.append(self.model)
        parts.append(" · ".join(facts))
        return Content.assemble(*parts)

    @property
    def incomplete(self) -> bool:
        return self.status in STATUS_TEXT

    # -- streaming ------------------------------------------------------------------------------
    def start(self, persona: str | None, routing: dict[str, Any] | None, model: str | None) -> None:
        self.persona, self.routing, self.model = persona, routing or {}, model
        self.restyle()

    def append(self, fragment: str) -> None:
        """A token's text: kept, and drawn with the next frame (FRAME_S after the last one)."""
        if not fragment:
            return
        self.text += fragment
        self.tokens += 1
        self._pending.append(fragment)
        if self._frame_timer is None:
            # Textual's timers need a positive delay.
            delay = max(0.001, self._frame_at + FRAME_S - monotonic())
            self._frame_timer = self.set_timer(delay, self._draw_frame)

    async def _draw_frame(self) -> None:
        self._frame_timer, self._frame_at = None, monotonic()
        if self._pending:
            if self._stream is None:
                self._stream = Markdown.get_stream(self.query_one(Markdown))
            fragments = "".join(self._pending)
            self._pending.clear()
            await self._stream.write(fragments)
        self.refresh_foot()

    def refresh_foot(self) -> None:
        self.query_one(".answer-foot", Static).update(self.render_foot())

    def cancelling(self) -> None:
        self.cancel_requested = True
        self.refresh_foot()

    async def finish(self, status: str, *, timings: dict[str, Any] | None = None, usage: dict[str, Any] | None = None,
                     finish_reason: str | None = None, error: str | None = None) -> None:
        """The stream ended: `done`, `cancelled`, `incomplete` or `error`."""
        if self._frame_timer is not None:
            self._frame_timer.stop()
            self._frame_timer = None
        if self._stream is not None or self._pending:
            self._pending.clear()
            if self._stream is not None:
                await self._stream.stop()
                self._stream = None
            # Appending parses only the tail: parse the whole text once so a block that was still
            # open (a code fence) renders as it will when the conversation is loaded again.
            await self.query_one(Markdown).update(self.text)
        timings, usage = timings or {}, usage or {}
        self.status, self.finish_reason, self.error = status, finish_reason, error
        self.ttft_ms = timings.get("ttft_ms", self.ttft_ms)
        self.tokens_per_s = timings.get("tokens_per_s", self.tokens_per_s)
        counted = usage.get("completion_tokens")  # the server's count (0 for a refusal: no model ran)
        self.tokens = int(counted) if isinstance(counted, int) else self.tokens
        self.restyle()

    def on_click(self, event: Click) -> None:
        self.post_message(self.Clicked(self))


class ChatLog(VerticalScroll):
    """The messages of one conversation. Anchored (by the pane, once there are messages) it
    follows the newest while the user is at the bottom, and sits its messages at the bottom."""

    DEFAULT_CSS = """
    ChatLog {
        height: 1fr;
        padding: 0 1;
    }
    ChatLog > .chat-empty {
        color: $text-muted;
        margin: 1 0;
    }
    """

    def answers(self) -> list[AnswerMessage]:
        return list(self.query(AnswerMessage).results(AnswerMessage))


class ChatInput(TextArea):
    """The message box. Enter sends and ctrl+j adds a line: the Chat pane binds both (ids
    chat-send and chat-newline, remappable), and the box runs them itself, in its own queue.
    Bindings run on the app's loop as soon as a key arrives, while typed characters wait in the
    box's queue: from a binding, a fast burst "hi<Enter>" could send "h"."""

    SENDS: ClassVar[frozenset[str]] = frozenset({"chat-send", "chat-newline"})

    async def _on_key(self, event: events.Key) -> None:
        if event.is_printable:  # typing: nothing to look up
            return
        active = self.screen.active_bindings.get(event.key)
        if active is not None and active.binding.id in self.SENDS:
            event.stop()
            event.prevent_default()  # not TextArea's own Enter (a new line)
            await self.app.run_action(active.binding.action, active.node)

    DEFAULT_CSS = """
    ChatInput {
        height: auto;
        min-height: 3;
        max-height: 10;
        width: 1fr;
    }
    """
