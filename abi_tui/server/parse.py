"""Request bodies to GenerationRequest: every wrong value is a 400 naming its field."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from abi_tui.backends.base import GenerationRequest, SamplingParams
from abi_tui.errors import AbiError, InvalidRequest
from abi_tui.server import requests
from abi_tui.server.guard import UnsupportedMediaType, is_json_content_type

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


def _content(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)  # the array form: text parts only


def message_dicts(messages: list[Any]) -> list[dict[str, Any]]:
    """Validated messages as the dicts chat templates read: `developer` becomes `system`, text
    parts are joined, an assistant's tool calls and a tool result's call id are kept."""
    out: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role,
                                "content": _content(message.content)}
        if isinstance(message, requests.AssistantMessage) and message.tool_calls:
            item["tool_calls"] = [{"id": call.id, "type": "function",
                                   "function": {"name": call.function.name,
                                                "arguments": call.function.arguments}}
                                  for call in message.tool_calls]
        if isinstance(message, requests.ToolMessage):
            item["tool_call_id"] = message.tool_call_id
        out.append(item)
    return out


def parse_messages(value: Any) -> list[dict[str, Any]]:
    """A `messages` list on its own (the ABI routes), checked as the chat route checks it."""
    try:
        messages = MESSAGES.validate_python(value)
    except ValidationError as exc:
        raise requests.invalid_request_at("messages", exc, value) from None
    return message_dicts(messages)


def _json_schema(body: requests.Sampling) -> tuple[bool, dict[str, Any] | None]:
    """(json_mode, schema) from response_format."""
    response_format = body.response_format
    if isinstance(response_format, requests.JsonObjectFormat):
        return True, None
    if isinstance(response_format, requests.JsonSchemaFormat):
        return True, response_format.json_schema.json_schema
    return False, None


def params_from(body: requests.Sampling, logprobs: bool = False, top_logprobs: int = 0) -> SamplingParams:
    json_mode, schema = _json_schema(body)
    stop = body.stop
    return SamplingParams(
        # max_completion_tokens wins; a wrong max_tokens beside it is still a 400 (validated).
        max_tokens=body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens,
        temperature=_or(body.temperature, 1.0),
        top_p=_or(body.top_p, 1.0),
        top_k=body.top_k or 0,
        min_p=_or(body.min_p, 0.0),
        stop=[stop] if isinstance(stop, str) else list(stop or []),
        seed=body.seed,
        presence_penalty=_or(body.presence_penalty, 0.0),
        frequency_penalty=_or(body.frequency_penalty, 0.0),
        repeat_penalty=_or(body.repeat_penalty, 1.0),
        dry_multiplier=_or(body.dry_multiplier, 0.0),
        logit_bias={int(token): float(bias) for token, bias in (body.logit_bias or {}).items()},
        json_mode=json_mode,
        json_schema=schema,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


def _or(value: float | None, default: float) -> float:
    return float(value) if value is not None else default


def sampling_params(data: dict) -> SamplingParams:
    """The sampling options of any generation body (persona chat, the ABI stream)."""
    return params_from(requests.validate(requests.Sampling, data))


def _tools(body: requests.ChatCompletionRequest) -> tuple[list[dict[str, Any]] | None, Any]:
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools] if body.tools else None
    choice = body.tool_choice
    if isinstance(choice, requests.NamedToolChoice):
        choice = {"type": "function", "function": {"name": choice.function.name}}
    if tools is None:
        choice = "none"
    return tools, choice or "auto"


def chat_request(data: dict, route: str) -> GenerationRequest:
    body = requests.validate(requests.ChatCompletionRequest, data)
    tools, choice = _tools(body)
    params = params_from(body, bool(body.logprobs), body.top_logprobs or 0)
    return GenerationRequest(model=body.model, messages=message_dicts(body.messages), params=params, route=route,
                             tools=tools, tool_choice=choice,
                             parallel_tool_calls=body.parallel_tool_calls is not False, n=body.n or 1)


def completion_request(data: dict, route: str) -> GenerationRequest:
    body = requests.validate(requests.CompletionRequest, data)
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    logprobs = body.logprobs is not None
    params = params_from(body, logprobs, body.logprobs or 0)
    return GenerationRequest(model=body.model, prompt=prompt, params=params, route=route, n=body.n or 1)


def stream_flags(data: dict) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    body = requests.validate(StreamFlags, data)
    options = body.stream_options
    return bool(body.stream), bool(options and options.include_usage)


class StreamFlags(requests.Body):
    stream: bool | None = None
    stream_options: requests.StreamOptions | None = None


MESSAGES = TypeAdapter(requests.MessageList)


MAX_EMBEDDING_INPUTS = 2048


def embedding_texts(value: Any) -> list[str]:
    """`input` of an embeddings request (OpenAI's and Ollama's): one string or a list of them."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest("'input' must be a string or a non-empty list of strings", param="input")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequest(f"'input' takes at most {MAX_EMBEDDING_INPUTS} strings per request", param="input")
    return texts
