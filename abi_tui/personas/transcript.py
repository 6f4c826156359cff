"""The prompt a base model (no chat template) continues in a persona's voice.

A base model given instructions as text continues them: it recites the system prompt. What it
does continue well is a transcript: one line saying who is talking, a few example turns, the
conversation so far and an open turn for the persona. Generation stops at the next user turn.
"""

from __future__ import annotations

from abi_tui.personas.catalogue import Persona

USER = "User"
# The model would go on to write the user's next line: stop there (and at a blank-line restart).
STOPS = ["\nUser:", "\nUSER:", "\n\nUser", "\nYou:"]


def transcript_prefix(persona: Persona) -> str:
    """The part every conversation with this persona shares (pinned in the KV cache once)."""
    lines = [persona.transcript or f"The following is a conversation between a user and {persona.name}.", ""]
    for user, answer in persona.examples:
        lines += [f"{USER}: {_one_turn(user)}", f"{persona.name}: {_one_turn(answer)}", ""]
    return "\n".join(lines) + "\n"


def transcript_prompt(persona: Persona, messages: list[dict[str, str]], note: str | None = None) -> str:
    """`messages` (user and assistant turns, the last one the user's) as a transcript that ends
    with the persona's open turn. A system message from the client and retrieved memory become
    context lines before the conversation."""
    parts = [transcript_prefix(persona)]
    context = [m["content"] for m in messages if m["role"] == "system" and m.get("content")]
    if note:
        context.append(note)
    if context:
        parts.append("\n".join(_one_turn(c) for c in context) + "\n\n")
    for message in messages:
        if message["role"] == "user":
            parts.append(f"{USER}: {_one_turn(message['content'])}\n")
        elif message["role"] == "assistant":
            parts.append(f"{persona.name}: {_one_turn(message['content'])}\n\n")
    parts.append(f"{persona.name}:")
    return "".join(parts)


def _one_turn(text: str) -> str:
    """A turn's text that cannot open a fake turn of its own (a pasted "User:" line)."""
    text = text.strip()
    return text.replace("\nUser:", "\nUser said:").replace("\nUSER:", "\nUSER said:")
