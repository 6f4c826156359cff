"""Ollama request fields to abi's request records, and the small pieces of Ollama's answers.

Ollama's wire format (its `api/types.go`): every field is checked here with a 400 naming it, as
`server/parse.py` does for the OpenAI routes. The mapping of `options`, `format` and
`keep_alive` is documented in docs/OLLAMA.md.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from abi_tui.backends.base import GenerationRequest, SamplingParams
from abi_tui.backends.grammar import schema_grammar
from abi_tui.errors import InvalidRequest
from abi_tui.server import requests
from abi_tui.server.parse import parse_messages

# Ollama's defaults for the options a client leaves out (its `api.DefaultOptions`).
DEFAULTS = {"temperature": 0.8, "top_p": 0.9, "top_k": 40, "min_p": 0.0, "repeat_penalty": 1.1}
# Accepted and not used: load-time settings that abi fixes when it loads a model (context size,
# threads, GPU layers: server flags and config.toml), and knobs of samplers abi does not run.
IGNORED_OPTIONS = frozenset({
    "num_ctx", "num_batch", "num_gpu", "main_gpu", "low_vram", "f16_kv", "logits_all", "vocab_only",
    "use_mmap", "use_mlock", "numa", "num_thread", "embedding_only", "num_keep", "penalize_newline",
    "repeat_last_n", "mirostat_tau", "mirostat_eta", "tfs_z",
})
# Options with one value that means "off": any other value is a 400 (abi cannot honour it).
OFF_ONLY = {"mirostat": (0,), "typical_p": (1.0, 0.0)}
SECONDS = re.compile(r"[-+]?[0-9]*\.?[0-9]+")  # a bare number in a string: seconds, as Ollama reads it
GO_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
# Longer than this is "never unload" (a timer or a timestamp that far out would overflow).
FOREVER_S = 10 * 365 * 86400.0
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def now_iso() -> str:
    """Ollama's timestamps: RFC 3339 in UTC with a Z."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def iso_from_epoch(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def model_name(body: dict[str, Any]) -> str:
    """The required `model` (Ollama has no default model)."""
    name = body.get("model")
    if name is None or (isinstance(name, str) and not name.strip()):
        raise InvalidRequest("model is required", param="model")
    if not isinstance(name, str):
        raise InvalidRequest("'model' must be a string", param="model")
    return name


def check_object(body: dict[str, Any], key: str) -> None:
    """A field abi reads nothing from (embedding `options`) is still checked for its type."""
    if body.get(key) is not None and not isinstance(body[key], dict):
        raise InvalidRequest(f"'{key}' must be an object", param=key)


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{key}' must be true or false", param=key)
    return value


def flag(body: dict[str, Any], key: str) -> bool:
    """An optional true/false field (false when absent)."""
    return _flag(body, key, False)


def stream_flag(body: dict[str, Any]) -> bool:
    """Ollama streams unless told not to."""
    return _flag(body, "stream", True)


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"'{key}' must be a string", param=key)
    return value


def _none_or_empty(value: Any) -> bool:
    return value is None or (isinstance(value, list) and not value)


def _is_off(value: Any, off: tuple[Any, ...]) -> bool:
    """`value in off` without Python's False == 0 (JSON tells them apart)."""
    return any(value is o if isinstance(o, bool) or o is None else
               (type(value) is type(o) and value == o) for o in off)


def refuse_unsupported(body: dict[str, Any]) -> None:
    """Features abi cannot serve, each a 400 saying so (their empty or off values pass)."""
    if not _is_off(body.get("think"), (None, False)):
        raise InvalidRequest("'think' is not supported: abi's models have no thinking mode; "
                             "leave it out or send false", param="think")
    if not _is_off(body.get("logprobs"), (None, False)) or not _is_off(body.get("top_logprobs"), (None, 0)):
        raise InvalidRequest("'logprobs' is not supported on abi's Ollama API", param="logprobs")
    if not _none_or_empty(body.get("images")):
        raise InvalidRequest("'images' is not supported: abi serves text models", param="images")


TOOLS = TypeAdapter(list[requests.Tool])


def tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """`tools`: the same function definitions as OpenAI's (Ollama has no `tool_choice`: the
    model may answer or call, OpenAI's "auto")."""
    value = body.get("tools")
    if _none_or_empty(value):
        return None
    try:
        return [tool.model_dump(exclude_none=True) for tool in TOOLS.validate_python(value)]
    except ValidationError as exc:
        raise requests.invalid_request_at("tools", exc, value) from None


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The messages as abi's chat records; None for a request without any (load or unload)."""
    value = body.get("messages")
    if value is None or value == []:
        return None
    if isinstance(value, list):
        for i, message in enumerate(value):
            if isinstance(message, dict) and not _none_or_empty(message.get("images")):
                raise InvalidRequest(f"messages[{i}].images: images are not supported: abi serves text models",
                                     param=f"messages[{i}].images")
        value = openai_messages(value)
    return parse_messages(value)


def openai_messages(messages: list[Any]) -> list[Any]:
    """Ollama's tool history in OpenAI's shape: a call's `arguments` is an object in Ollama and
    JSON text in OpenAI, and Ollama's calls and results carry no ids (a result names its tool in
    `tool_name`, or nothing). Each call gets an id, and each result the id of the earliest
    unanswered call of its tool (else of any tool). Anything malformed is passed on as it is,
    for the message check to name."""
    out: list[Any] = []
    waiting: list[tuple[str, str]] = []  # (call id, tool name) of calls without a result yet
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            out.append(message)
            continue
        message = {k: v for k, v in message.items() if k not in ("tool_name", "thinking", "images")}
        calls = message.get("tool_calls")
        if message.get("role") == "assistant" and isinstance(calls, list):
            converted = []
            for j, call in enumerate(calls):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    converted.append(call)
                    continue
                call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else f"call_{i}_{j}"
                arguments = function.get("arguments")
                if arguments is None:
                    arguments = {}
                if not isinstance(arguments, str):
                    arguments = json.dumps(arguments, ensure_ascii=False)
                converted.append({"id": call_id, "type": "function",
                                  "function": {"name": function.get("name"), "arguments": arguments}})
                waiting.append((call_id, function.get("name")))
            message["tool_calls"] = converted
        elif message.get("role") == "tool" and not message.get("tool_call_id"):
            name = messages[i].get("tool_name")
            match = next((w for w in waiting if w[1] == name), waiting[0] if waiting else None)
            if match is not None:
                waiting.remove(match)
            message["tool_call_id"] = match[0] if match else f"call_{i}"
        out.append(message)
    return out


def ollama_tool_calls(calls: list[Any]) -> list[dict[str, Any]]:
    """abi's parsed calls (tool_calls.Call) in Ollama's shape: `arguments` as an object."""
    return [{"id": call.id, "function": {"index": call.index, "name": call.name,
                                         "arguments": _object(call.arguments)}} for call in calls]


def _object(arguments: str) -> dict[str, Any]:
    """A call's arguments as the object Ollama's clients read; text that is no JSON object (a
    call cut short by num_predict) is kept under "arguments"."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


@dataclass
class GenerateInput:
    """`/api/generate`'s prompt: messages for the model's chat template, or raw text."""

    messages: list[dict[str, str]] | None
    prompt: str | None

    @property
    def empty(self) -> bool:
        return self.messages is None and self.prompt is None


def generate_input(body: dict[str, Any]) -> GenerateInput:
    if not _none_or_empty(body.get("tools")):
        raise InvalidRequest("'tools' belongs to /api/chat: /api/generate makes no tool calls", param="tools")
    prompt, system = _text(body, "prompt"), _text(body, "system")
    for key in ("suffix", "template"):
        if _text(body, key):
            raise InvalidRequest(f"'{key}' is not supported: abi uses the model's own chat template",
                                 param=key)
    context = body.get("context")
    if not _none_or_empty(context):
        raise InvalidRequest("'context' is not supported (abi returns none): send the conversation to "
                             "/api/chat as messages", param="context")
    raw = _flag(body, "raw", False)
    if not prompt:
        return GenerateInput(None, None)
    if raw:  # as Ollama: no template, and no system prompt
        return GenerateInput(None, prompt)
    messages = [{"role": "system", "content": system}] if system else []
    return GenerateInput([*messages, {"role": "user", "content": prompt}], None)


def _number(options: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"'options.{key}' must be a number", param=f"options.{key}")
    if not lo <= value <= hi:
        raise InvalidRequest(f"'options.{key}' must be between {lo:g} and {hi:g}, got {value}",
                             param=f"options.{key}")
    return float(value)


def _integer(options: dict[str, Any], key: str) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'options.{key}' must be an integer", param=f"options.{key}")
    return value


def _stop(options: dict[str, Any]) -> list[str]:
    value = options.get("stop")
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value) or len(value) > 16:
        raise InvalidRequest("'options.stop' must be a list of at most 16 non-empty strings",
                             param="options.stop")
    return list(value)


@dataclass
class Sampling:
    params: SamplingParams
    given: dict[str, Any]  # the options the client set, by their OpenAI names (the persona hook reads them)


def sampling(body: dict[str, Any]) -> Sampling:
    """`options` and `format` to sampling parameters, Ollama's defaults where the client set none."""
    options = body.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise InvalidRequest("'options' must be an object", param="options")
    for key, off in OFF_ONLY.items():
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or value not in off):
            raise InvalidRequest(f"'options.{key}' is not supported (abi has no such sampler); "
                                 f"leave it out or send {off[0]}", param=f"options.{key}")
    given: dict[str, Any] = {}
    for key, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0), ("min_p", 0.0, 1.0),
                        ("presence_penalty", -2.0, 2.0), ("frequency_penalty", -2.0, 2.0),
                        ("repeat_penalty", 0.0, 10.0)):
        value = _number(options, key, lo, hi)
        if value is not None:
            given[key] = value
    if given.get("repeat_penalty") == 0:
        raise InvalidRequest("'options.repeat_penalty' must be greater than 0 (1 = off)",
                             param="options.repeat_penalty")
    top_k = _integer(options, "top_k")
    if top_k is not None:
        if top_k < 0:
            raise InvalidRequest("'options.top_k' must be at least 0", param="options.top_k")
        given["top_k"] = top_k
    seed = _integer(options, "seed")
    if seed is not None:
        given["seed"] = seed
    max_tokens = None
    num_predict = _integer(options, "num_predict")
    if num_predict is not None:
        # -1: no limit, -2: fill the context; both are abi's "until the context is full".
        if num_predict == 0 or num_predict < -2:
            raise InvalidRequest("'options.num_predict' must be at least 1, or -1 (no limit) or -2 "
                                 "(fill the context)", param="options.num_predict")
        max_tokens = num_predict if num_predict > 0 else None
    stop = _stop(options)
    values = {**DEFAULTS, **given}
    schema, json_mode = format_schema(body.get("format"))
    params = SamplingParams(
        max_tokens=max_tokens, temperature=values["temperature"], top_p=values["top_p"], top_k=values["top_k"],
        min_p=values["min_p"], stop=stop, seed=values.get("seed"),
        presence_penalty=values.get("presence_penalty", 0.0),
        frequency_penalty=values.get("frequency_penalty", 0.0), repeat_penalty=values["repeat_penalty"],
        json_mode=json_mode, json_schema=schema)
    return Sampling(params, given)


def format_schema(value: Any) -> tuple[dict[str, Any] | None, bool]:
    """`format`: (the JSON schema, json_mode); a schema the grammar cannot enforce is a 400 now,
    naming `format`, not later in the backend."""
    if value in (None, ""):
        return None, False
    if value == "json":
        return None, True
    if isinstance(value, dict):
        schema_grammar(value, "format")
        return value, True
    raise InvalidRequest("'format' must be \"json\" or a JSON schema (an object)", param="format")


def keep_alive_seconds(value: Any) -> float | None:
    """`keep_alive`: seconds to keep the model after this request; None: no change (abi's pool
    rules), 0: unload now, math.inf: never unload. Numbers are seconds; strings are Go durations
    ("5m", "1h30m", "-1")."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRequest("'keep_alive' must be a number of seconds or a duration like \"5m\"",
                             param="keep_alive")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _duration(value.strip())
    else:
        raise InvalidRequest("'keep_alive' must be a number of seconds or a duration like \"5m\"",
                             param="keep_alive")
    if not math.isfinite(seconds):
        raise InvalidRequest("'keep_alive' must be finite (a negative value keeps the model loaded)",
                             param="keep_alive")
    return math.inf if seconds < 0 or seconds > FOREVER_S else seconds


def _duration(text: str) -> float:
    if SECONDS.fullmatch(text):
        return float(text)
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = GO_DURATION.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise InvalidRequest(f"'keep_alive' {text!r} is not a duration: use seconds or e.g. \"5m\", "
                             "\"1h30m\", \"-1\"", param="keep_alive")
    return sign * sum(float(n) * DURATION_UNITS[u] for n, u in parts)


def generation_request(name: str, messages: list[dict[str, Any]] | None, prompt: str | None,
                       params: SamplingParams, route: str,
                       tools: list[dict[str, Any]] | None = None) -> GenerationRequest:
    return GenerationRequest(model=strip_latest(name), messages=messages, prompt=prompt, params=params,
                             route=route, tools=tools, tool_choice="auto" if tools else "none")


def strip_latest(name: str) -> str:
    """Ollama clients may add the default tag ":latest" to a name from /api/tags; abi's names
    have no tags, except models in Ollama's own store (`ollama:llama3.2:latest`), which keep it."""
    if name.endswith(":latest") and not name.startswith("ollama:"):
        return name[: -len(":latest")]
    return name


def parameter_size(summary: dict[str, Any] | None) -> str:
    """Ollama's "8.0B" / "268.10M" from the GGUF's size label or parameter count."""
    if not summary:
        return ""
    if summary.get("size_label"):
        return str(summary["size_label"])
    count = summary.get("parameters")
    if not count:
        return ""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)
