"""Tool calls for local models: how a conversation with tools becomes a prompt, and how the
model's answer becomes OpenAI `tool_calls`.

A chat template that mentions `tools` renders the definitions, the assistant's calls and the
tool results itself; the call format it teaches is read off its text (Hermes/Qwen `<tool_call>`,
Llama 3 bare JSON with `parameters`, Mistral `[TOOL_CALLS]`, else bare JSON). A template that
does not (and the fallback templates) gets the documented fallback: the definitions and
`data/tool_prompt.md` appended to the system message, calls written as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, results sent back as a user turn
in `<tool_response>` tags (docs/API.md).

`ToolCallParser` reads the answer as it streams: text outside calls is content, and a call's
arguments are passed on fragment by fragment as they are generated.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOOL_PROMPT = (Path(__file__).parent / "data" / "tool_prompt.md").read_text(encoding="utf-8")


@dataclass(frozen=True)
class ToolFormat:
    name: str
    open: str  # before each call ("" for bare JSON)
    close: str  # after each call
    args_key: str  # "arguments" or "parameters"
    list_open: str = ""  # Mistral wraps the calls in one JSON list
    list_close: str = ""
    separator: str = "\n"  # between calls when there are several


HERMES = ToolFormat("hermes", "<tool_call>", "</tool_call>", "arguments")
LLAMA3 = ToolFormat("llama3", "", "", "parameters", separator=";")
MISTRAL = ToolFormat("mistral", "[TOOL_CALLS]", "", "arguments", list_open="[", list_close="]", separator=",")
JSON_CALL = ToolFormat("json", "", "", "arguments")
FALLBACK = ToolFormat("fallback", "<tool_call>", "</tool_call>", "arguments")
FORMATS = {f.name: f for f in (HERMES, LLAMA3, MISTRAL, JSON_CALL, FALLBACK)}


def template_handles_tools(template: str) -> bool:
    return "tools" in template


def detect_format(template: str) -> ToolFormat:
    """The call format a chat template teaches (FALLBACK when it renders no tools)."""
    if not template_handles_tools(template):
        return FALLBACK
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<tool_call>" in template:
        return HERMES
    if "<|python_tag|>" in template or ("<|start_header_id|>" in template and "parameters" in template):
        return LLAMA3
    return JSON_CALL


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def offered_tools(tools: list[dict[str, Any]] | None, choice: Any) -> list[dict[str, Any]]:
    """The tools the model may call: none for "none", the named one for a named choice."""
    if not tools or choice == "none":
        return []
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        return [t for t in tools if t["function"]["name"] == name]
    return list(tools)


def parameters_of(tool: dict[str, Any]) -> dict[str, Any]:
    return tool["function"].get("parameters") or {"type": "object", "properties": {}}


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def for_template(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a template that renders tools: Hugging Face templates read a call's
    arguments as an object (`tool_call.function.arguments | tojson`)."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            message = {**message, "tool_calls": [
                {**call, "function": {**call["function"], "arguments": _arguments(call["function"]["arguments"])}}
                for call in calls]}
        out.append(message)
    return out


def fallback_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages any template renders: tool definitions in the system message, calls as
    `<tool_call>` lines in the assistant's text, results as user turns."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        if role == "assistant" and message.get("tool_calls"):
            lines = [message.get("content") or ""] if message.get("content") else []
            for call in message["tool_calls"]:
                payload = {"name": call["function"]["name"], "arguments": _arguments(call["function"]["arguments"])}
                lines.append(f"{FALLBACK.open}{json.dumps(payload, ensure_ascii=False)}{FALLBACK.close}")
            out.append({"role": "assistant", "content": "\n".join(lines)})
        elif role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{message['content']}\n</tool_response>"})
        else:
            out.append({"role": role, "content": message.get("content") or ""})
    if tools:
        listing = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
        prompt = TOOL_PROMPT.format(tools=listing).strip()
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    # Templates that insist on alternating turns: merge consecutive user turns (several results).
    merged: list[dict[str, Any]] = []
    for message in out:
        if merged and message["role"] == "user" and merged[-1]["role"] == "user":
            merged[-1] = {"role": "user", "content": merged[-1]["content"] + "\n" + message["content"]}
        else:
            merged.append(message)
    return merged


# ----------------------------------------------------------------------------- the answer
_HEAD = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')
HEAD_LIMIT = 400  # characters of a call's start read before deciding it is no call


@dataclass
class Call:
    index: int
    id: str
    name: str
    arguments: str = ""


class ToolCallParser:
    """Splits an answer into content and tool calls as its text arrives.

    `feed(text)` and `finish()` return events: ("text", str), ("call", Call) when a call's
    name is known, ("args", Call, fragment) as its arguments are generated. A call that does
    not parse is given back as text."""

    def __init__(self, fmt: ToolFormat) -> None:
        self.fmt = fmt
        self.calls: list[Call] = []
        self._buffer = ""
        self._state = "text"
        self._raw = ""  # the current call's text so far, given back if it turns out not to parse
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._started = False
        self._seen_text = False

    def feed(self, text: str) -> list[tuple]:
        self._buffer += text
        events: list[tuple] = []
        while self._buffer:
            before = (self._state, len(self._buffer))
            getattr(self, f"_in_{self._state}")(events)
            if (self._state, len(self._buffer)) == before:
                break  # needs more text
        return events

    def finish(self) -> list[tuple]:
        events: list[tuple] = []
        if self._state in ("head", "args") or (self._state == "text" and self._buffer):
            if self._state == "args" and self.calls:
                # The arguments ended with the answer (a call cut by max_tokens): keep them.
                if self._buffer:
                    events.append(("args", self.calls[-1], self._take(len(self._buffer))))
            else:
                rest = self._raw + self._buffer
                if rest:
                    events.append(("text", rest))
        self._buffer = self._raw = ""
        return events

    def _take(self, n: int) -> str:
        piece, self._buffer = self._buffer[:n], self._buffer[n:]
        return piece

    # states ---------------------------------------------------------------------------------
    def _in_text(self, events: list[tuple]) -> None:
        buffer = self._buffer
        if not self.fmt.open:  # bare JSON: a call only at the start of the answer (or after one)
            stripped = buffer.lstrip()
            if not stripped:
                return
            if stripped.startswith(("{", "[")) and not self._seen_text:
                self._take(len(buffer) - len(stripped) + (1 if stripped[0] == "[" else 0))
                self._raw = ""
                self._state = "head"
                return
            self._seen_text = True
            events.append(("text", self._take(len(buffer))))
            return
        start = buffer.find(self.fmt.open)
        if start >= 0:
            if start:
                events.append(("text", self._take(start)))
            self._raw = self._take(len(self.fmt.open))
            self._state = "head"
            return
        # Hold back what could be the start of the opening tag.
        keep = 0
        for n in range(min(len(self.fmt.open) - 1, len(buffer)), 0, -1):
            if buffer.endswith(self.fmt.open[:n]):
                keep = n
                break
        if len(buffer) > keep:
            events.append(("text", self._take(len(buffer) - keep)))

    def _in_head(self, events: list[tuple]) -> None:
        stripped = self._buffer.lstrip(" \n\t" + self.fmt.list_open)
        match = _HEAD.match(stripped)
        if match is None:
            if len(self._buffer) > HEAD_LIMIT or (stripped and not stripped.startswith("{")) or \
                    (len(stripped) > 1 and not re.match(r'\{\s*("|$)', stripped)):
                self._state = "text"
                self._seen_text = True
                events.append(("text", self._raw + self._take(len(self._buffer))))
                self._raw = ""
            return
        consumed = len(self._buffer) - len(stripped) + match.end()
        self._raw += self._take(consumed)
        call = Call(len(self.calls), new_call_id(), json.loads(f'"{match.group(1)}"'))
        self.calls.append(call)
        events.append(("call", call))
        self._state, self._depth, self._in_string, self._escaped, self._started = "args", 0, False, False, False

    def _in_args(self, events: list[tuple]) -> None:
        call = self.calls[-1]
        if not self._started:
            self._buffer = self._buffer.lstrip()
            if not self._buffer:
                return
            self._started = True
        end = None
        for i, ch in enumerate(self._buffer):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
                    if self._depth == 0:
                        end = i + 1
                        break
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    end = i + 1
                    break
            elif self._depth == 0 and ch in ",}":  # a bare scalar ended
                end = i
                break
        if end is None:
            piece = self._take(len(self._buffer))
            call.arguments += piece
            events.append(("args", call, piece))
            return
        piece = self._take(end)
        call.arguments += piece
        events.append(("args", call, piece))
        self._state = "tail"

    def _in_tail(self, events: list[tuple]) -> None:
        """After the arguments: the call's closing brace, the closing tag, separators."""
        buffer = self._buffer
        stripped = buffer.lstrip()
        if not stripped.startswith("}"):
            if stripped:  # extra keys after the arguments: skip to the closing brace
                cut = stripped.find("}")
                if cut < 0:
                    return
                self._take(len(buffer) - len(stripped) + cut)
            return
        rest = stripped[1:].lstrip()
        if self.fmt.close:
            if len(rest) < len(self.fmt.close) and self.fmt.close.startswith(rest):
                return  # the closing tag is still coming
            if rest.startswith(self.fmt.close):
                rest = rest[len(self.fmt.close):]
        rest = rest.lstrip(" \n\t" + self.fmt.separator + self.fmt.list_close)
        self._buffer = rest
        self._raw = ""
        self._state = "between"

    def _in_between(self, events: list[tuple]) -> None:
        stripped = self._buffer.lstrip(" \n\t" + self.fmt.separator + self.fmt.list_close)
        if not stripped:
            self._buffer = ""
            return
        if self.fmt.open and stripped.startswith(self.fmt.open):
            self._buffer = stripped[len(self.fmt.open):]
            self._raw = self.fmt.open
            self._state = "head"
            return
        if self.fmt.open and self.fmt.open.startswith(stripped):
            return  # maybe the next call's tag
        if stripped.startswith("{"):
            self._buffer = stripped
            self._raw = ""
            self._state = "head"
            return
        self._state = "text"
        self._seen_text = True
        self._buffer = stripped


def split_answer(text: str, fmt: ToolFormat) -> tuple[str, list[Call]]:
    """A whole answer as (content, calls)."""
    parser = ToolCallParser(fmt)
    events = parser.feed(text) + parser.finish()
    content = "".join(e[1] for e in events if e[0] == "text")
    return content, parser.calls
