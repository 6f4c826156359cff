"""Request bodies to GenerationRequest: every wrong value is a 400 naming its field."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from aiohttp import web

from abi_tui.backends.base import GenerationRequest, SamplingParams
from abi_tui.errors import AbiError, InvalidRequest
from abi_tui.server.guard import UnsupportedMediaType, is_json_content_type

ROLES = ("system", "developer", "user", "assistant")
TOKEN_ID_RE = re.compile(r"^[0-9]{1,10}$")
# OpenAI options this server does not implement, and the values that mean "off" (accepted).
# openapi.py describes exactly these.
UNSUPPORTED_OFF: dict[str, tuple[Any, ...]] = {
    "tools": (None, []), "functions": (None, []), "tool_choice": (None, "none"), "function_call": (None, "none"),
    "logprobs": (None, False, 0), "top_logprobs": (None, 0),
}
UNSUPPORTED_COMPLETION_OFF: dict[str, tuple[Any, ...]] = {"suffix": (None, ""), "echo": (None, False),
                                                          "best_of": (None, 1)}


MAX_JSON_DEPTH = 64
# A JSON string (escapes included, or running to the end of the text): brackets inside do not nest.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|$)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENERS = frozenset(b"[{")


class InvalidJson(InvalidRequest):
    """A body or message that is not JSON text (its code on the HTTP API stays invalid_request)."""


class PayloadTooLarge(AbiError):
    status = 413
    code = "payload_too_large"


def nesting_depth_over(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `raw` nests arrays/objects deeper than `limit`: strings cut out and everything but
    brackets dropped (in C), then one pass that stops at the first level over the limit. The
    parser itself recurses per level, so this runs before it."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # too few openers to nest that deep (most bodies: no scan at all)
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return False
    depth = 0
    for byte in brackets:
        if byte in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def loads_json(raw: bytes | str, limit: int, what: str = "the request body") -> Any:
    """The one JSON reader for request bodies and WebSocket messages: size, depth, syntax and
    Unicode checked, each a 4xx naming the problem, before anything else looks at the value."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > limit:
        raise PayloadTooLarge(f"{what} is over the {limit}-byte limit")
    if not raw.strip():
        raise InvalidJson(f"{what} is empty; send a JSON object")
    if nesting_depth_over(raw):
        raise InvalidRequest(f"{what} nests arrays and objects deeper than {MAX_JSON_DEPTH} levels",
                             code="json_too_deep")
    try:
        # UTF-8 only (json.loads would guess UTF-16/32 from bytes, and those are not what the
        # bracket scan above reads); a byte-order mark is tolerated.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidJson(f"{what} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidJson(f"{what} is not valid JSON: {exc}") from None
    if b"\\u" in raw:  # only a backslash-u escape can smuggle in a lone surrogate
        check_text(data)
    return data


async def read_json(request: web.Request, limit: int) -> dict[str, Any]:
    """A request body as a JSON object. The content type is checked again here (the guard
    middleware checks it first) so that no route can read a body a page could have sent."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes is over the {limit}-byte limit")
    if request.body_exists and not is_json_content_type(request.headers.get("Content-Type", "")):
        raise UnsupportedMediaType("send the body as application/json with 'Content-Type: application/json'")
    body = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
    data = loads_json(bytes(body), limit)
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return data


def _bad_text(value: Any, path: str) -> str | None:
    """The path of the first string (key or value) that is not valid Unicode text, if any."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found = _bad_text(key, where) or _bad_text(item, where)
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _bad_text(item, f"{path}[{i}]")
            if found:
                return found
    return None


def check_text(data: Any) -> None:
    """JSON may escape a lone UTF-16 surrogate (\\ud800), which no UTF-8 encoder (tokenizers,
    the response writer) accepts: refuse it here rather than fail mid-stream."""
    where = _bad_text(data, "")
    if where is not None:
        where = where.encode("utf-8", "replace").decode()  # the path may hold the surrogate itself
        raise InvalidRequest(f"'{where}' contains a lone UTF-16 surrogate escape; send valid Unicode text",
                             param=where)


def _is_one_of(value: Any, allowed: tuple[Any, ...]) -> bool:
    """`value in allowed` without Python's bool/int/float equality (False == 0 == 0.0): the
    unsupported OpenAI options are accepted only in their documented 'off' forms."""
    def same(a: Any) -> bool:
        if isinstance(value, bool) or isinstance(a, bool):
            return value is a
        if isinstance(value, (int, float)) and isinstance(a, (int, float)):
            return value == a
        return type(value) is type(a) and value == a

    return any(same(a) for a in allowed)


def _number(data: dict, key: str, default: float | None, lo: float, hi: float) -> float | None:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"'{key}' must be a number", param=key)
    if not lo <= value <= hi:
        raise InvalidRequest(f"'{key}' must be between {lo:g} and {hi:g}, got {value}", param=key)
    return float(value)


def _integer(data: dict, key: str, lo: int | None = None, hi: int | None = None) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidRequest(f"'{key}' must be an integer", param=key)
    if lo is not None and value < lo:
        raise InvalidRequest(f"'{key}' must be at least {lo}, got {value}", param=key)
    if hi is not None and value > hi:
        raise InvalidRequest(f"'{key}' must be at most {hi}, got {value}", param=key)
    return value


def _string(data: dict, key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"'{key}' must be a string", param=key)
    return value


def _bool(data: dict, key: str) -> bool:
    value = data.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{key}' must be true or false", param=key)
    return value


def _stop(data: dict) -> list[str]:
    value = data.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if len(value) > 16:
            raise InvalidRequest("'stop' takes at most 16 strings", param="stop")
        return list(value)
    raise InvalidRequest("'stop' must be a string or a list of strings", param="stop")


def _logit_bias(data: dict) -> dict[int, float]:
    value = data.get("logit_bias")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("'logit_bias' must be an object of token id to bias", param="logit_bias")
    bias = {}
    for key, amount in value.items():
        # ASCII digits only: int() would also take " 1", "1_0" and other scripts' digits.
        if not isinstance(key, str) or not TOKEN_ID_RE.match(key):
            raise InvalidRequest(f"'logit_bias' key {key!r} is not a token id", param="logit_bias")
        token = int(key)
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not -100 <= amount <= 100:
            raise InvalidRequest(f"'logit_bias' value for token {key} must be a number from -100 to 100",
                                 param="logit_bias")
        bias[token] = float(amount)
    return bias


def _content(message: dict, index: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None and message.get("role") == "assistant":
        return ""
    if isinstance(content, list):  # the array form: text parts only
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(f"messages[{index}].content: only text parts are supported",
                                     param=f"messages[{index}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise InvalidRequest(f"messages[{index}].content must be a string", param=f"messages[{index}].content")


def parse_messages(value: Any) -> list[dict[str, str]]:
    if value is None:
        raise InvalidRequest("'messages' is required", param="messages")
    if not isinstance(value, list) or not value:
        raise InvalidRequest("'messages' must be a non-empty list of messages", param="messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{i}] must be an object with 'role' and 'content'", param=f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            if role in ("tool", "function"):
                raise InvalidRequest(f"messages[{i}]: tool messages are not supported", param=f"messages[{i}].role")
            raise InvalidRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}", param=f"messages[{i}].role")
        if not _is_one_of(message.get("tool_calls"), (None, [])):
            raise InvalidRequest(f"messages[{i}]: tool calls are not supported", param=f"messages[{i}].tool_calls")
        messages.append({"role": "system" if role == "developer" else role, "content": _content(message, i)})
    return messages


def _repeat_penalty(data: dict) -> float:
    value = _number(data, "repeat_penalty", 1.0, 0.0, 10.0)
    if value is None or value <= 0:  # llama.cpp divides by it
        raise InvalidRequest("'repeat_penalty' must be greater than 0 (1 = off)", param="repeat_penalty")
    return value


def sampling_params(data: dict) -> SamplingParams:
    n = _integer(data, "n", lo=1)
    if n is not None and n > 1:
        raise InvalidRequest("'n' greater than 1 is not supported: send one request per choice", param="n")
    for key, off in UNSUPPORTED_OFF.items():
        if not _is_one_of(data.get(key), off):
            raise InvalidRequest(f"'{key}' is not supported by this server", param=key)
    # Both checked (a wrong max_tokens is a 400 even when max_completion_tokens wins).
    max_completion_tokens = _integer(data, "max_completion_tokens", lo=1)
    max_tokens = _integer(data, "max_tokens", lo=1)
    if max_completion_tokens is not None:
        max_tokens = max_completion_tokens
    json_mode = False
    response_format = data.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind == "json_object":
            json_mode = True
        elif kind != "text":
            raise InvalidRequest("'response_format.type' must be 'text' or 'json_object'", param="response_format")
    seed = _integer(data, "seed")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_number(data, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(data, "top_p", 1.0, 0.0, 1.0),
        top_k=_integer(data, "top_k", lo=0) or 0,
        min_p=_number(data, "min_p", 0.0, 0.0, 1.0),
        stop=_stop(data),
        seed=seed,
        presence_penalty=_number(data, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(data, "frequency_penalty", 0.0, -2.0, 2.0),
        repeat_penalty=_repeat_penalty(data),
        dry_multiplier=_number(data, "dry_multiplier", 0.0, 0.0, 10.0),
        logit_bias=_logit_bias(data),
        json_mode=json_mode,
    )


def chat_request(data: dict, route: str) -> GenerationRequest:
    model = _string(data, "model")
    messages = parse_messages(data.get("messages"))
    return GenerationRequest(model=model, messages=messages, params=sampling_params(data), route=route)


def completion_request(data: dict, route: str) -> GenerationRequest:
    model = _string(data, "model")
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is None:
        raise InvalidRequest("'prompt' is required", param="prompt")
    if not isinstance(prompt, str):
        raise InvalidRequest("'prompt' must be a string (one prompt per request)", param="prompt")
    for key, off in UNSUPPORTED_COMPLETION_OFF.items():
        if not _is_one_of(data.get(key), off):
            raise InvalidRequest(f"'{key}' is not supported by this server", param=key)
    return GenerationRequest(model=model, prompt=prompt, params=sampling_params(data), route=route)


def stream_flags(data: dict) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream = _bool(data, "stream")
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options")
    include_usage = (options or {}).get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise InvalidRequest("'stream_options.include_usage' must be true or false", param="stream_options.include_usage")
    return stream, bool(include_usage)
