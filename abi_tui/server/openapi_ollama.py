"""The OpenAPI operations of Ollama's API (`server/routes_ollama.py`), merged into
`openapi.OPERATIONS` when the routes are set up. Errors here are Ollama's `{"error": "..."}`."""

from __future__ import annotations

from typing import Any

from abi_tui.server.openapi import BOOLEAN, INTEGER, NULL, NUMBER, OBJECT, STRING, _json

ERROR = {"$ref": "#/components/schemas/OllamaError"}
SCHEMAS = {"OllamaError": {"type": "object", "required": ["error"], "properties": {"error": STRING}}}
NONE_OR_EMPTY = {"anyOf": [NULL, {"type": "array", "maxItems": 0}]}
OFF = {"enum": [None, False]}


def _opt(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, NULL]}


OPTIONS = {"type": "object", "description": "Sampling options; load-time options are accepted and ignored "
           "(docs/OLLAMA.md)", "properties": {
    "temperature": _opt({"type": "number", "minimum": 0, "maximum": 2}),
    "top_p": _opt({"type": "number", "minimum": 0, "maximum": 1}),
    "min_p": _opt({"type": "number", "minimum": 0, "maximum": 1}),
    "top_k": _opt({"type": "integer", "minimum": 0}),
    "seed": _opt(INTEGER),
    "num_predict": _opt({"anyOf": [{"type": "integer", "minimum": 1}, {"enum": [-1, -2]}]}),
    "stop": _opt({"type": "array", "maxItems": 16, "items": {"type": "string", "minLength": 1}}),
    # num_ctx, num_thread and the other load-time options: any value, ignored.
    "repeat_penalty": _opt({"type": "number", "exclusiveMinimum": 0, "maximum": 10}),
    "presence_penalty": _opt({"type": "number", "minimum": -2, "maximum": 2}),
    "frequency_penalty": _opt({"type": "number", "minimum": -2, "maximum": 2}),
    "mirostat": _opt({"const": 0}), "typical_p": _opt({"enum": [0, 1]})}}
KEEP_ALIVE = _opt({"anyOf": [NUMBER, {"type": "string", "pattern":
                                     "^[-+]?([0-9]*\\.?[0-9]+|([0-9]*\\.?[0-9]+(ns|us|µs|ms|s|m|h))+)$"}]})
FORMAT = _opt({"anyOf": [{"enum": ["", "json"]}, {"type": "object", "description": "A JSON schema the answer follows"}]})
COMMON = {"model": {"type": "string", "minLength": 1, "pattern": "\\S"}, "stream": _opt(BOOLEAN),
          "format": FORMAT, "options": _opt(OPTIONS), "keep_alive": KEEP_ALIVE, "think": OFF,
          "logprobs": OFF, "top_logprobs": {"enum": [None, 0]}}
# Ollama's tool call: `arguments` is an object (OpenAI's is JSON text); abi adds the call's id and
# index, which Ollama's newer servers send too.
TOOL_CALL = {"type": "object", "required": ["function"], "properties": {
    "id": STRING, "function": {"type": "object", "required": ["name"], "properties": {
        "index": INTEGER, "name": STRING, "arguments": OBJECT}}}}
TOOL_CALLS = _opt({"type": "array", "items": TOOL_CALL})
TOOL = {"$ref": "#/components/schemas/Tool"}  # OpenAI's function definition, the same check
# Ollama's chat message; "images", if present, empty. A tool result names its tool
# (`tool_name`) or the call (`tool_call_id`), else it answers the earliest unanswered call.
MESSAGES = {"type": "array", "items": {"oneOf": [
    {"type": "object", "required": ["role", "content"], "properties": {
        "role": {"type": "string", "enum": ["system", "user"]}, "content": STRING,
        "images": NONE_OR_EMPTY}},
    {"type": "object", "required": ["role"], "properties": {
        "role": {"const": "assistant"}, "content": {"anyOf": [STRING, NULL]},
        "images": NONE_OR_EMPTY, "tool_calls": TOOL_CALLS}},
    {"type": "object", "required": ["role", "content"], "properties": {
        "role": {"const": "tool"}, "content": STRING, "tool_name": _opt(STRING),
        "tool_call_id": _opt(STRING)}}]}}
DETAILS = {"type": "object", "properties": {"format": STRING, "family": STRING, "parameter_size": STRING,
                                            "quantization_level": STRING}}
MODEL = {"type": "object", "required": ["name", "model", "modified_at", "size", "digest", "details"],
         "properties": {"name": STRING, "model": STRING, "modified_at": STRING, "size": INTEGER,
                        "digest": STRING, "details": DETAILS}}
COUNTERS = {"done": BOOLEAN, "done_reason": STRING, "total_duration": INTEGER, "load_duration": INTEGER,
            "prompt_eval_count": INTEGER, "prompt_eval_duration": INTEGER, "eval_count": INTEGER,
            "eval_duration": INTEGER, "model": STRING, "created_at": STRING}
CHAT_LINE = {"type": "object", "properties": {"message": {"type": "object", "properties": {
    "role": STRING, "content": STRING, "tool_calls": TOOL_CALLS}}, "error": STRING, **COUNTERS}}
GENERATE_LINE = {"type": "object", "properties": {"response": STRING, "error": STRING, **COUNTERS}}
GENERATION_ERRORS = (400, 401, 404, 409, 413, 415, 422, 429, 500, 502, 503, 504)


def _op(summary: str, *, body: dict[str, Any] | None = None, ok: dict[str, Any] | None = None,
        ndjson: dict[str, Any] | None = None, errors: tuple[int, ...] = (400, 401)) -> dict[str, Any]:
    content = _json(ok or OBJECT)
    if ndjson is not None:  # streamed: one such object per line
        content["application/x-ndjson"] = {"schema": ndjson}
    responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
    for status in sorted({*errors, 403}):
        responses[str(status)] = {"description": "Error", "content": _json(ERROR)}
    op: dict[str, Any] = {"summary": summary, "tags": ["ollama"], "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json(body)}
    return op


OPERATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "/api/version": {"get": _op("Server version (Ollama API)", errors=(401,),
                                ok={"type": "object", "required": ["version"], "properties": {"version": STRING}})},
    "/api/tags": {"get": _op("Local models (Ollama API)", errors=(401,), ok={
        "type": "object", "required": ["models"], "properties": {"models": {"type": "array", "items": MODEL}}})},
    "/api/ps": {"get": _op("Loaded models (Ollama API)", errors=(401,), ok={
        "type": "object", "required": ["models"], "properties": {"models": {"type": "array", "items": {
            **MODEL, "properties": {**MODEL["properties"], "size_vram": INTEGER, "context_length": INTEGER,
                                    "expires_at": {"type": ["string", "null"]}}}}}})},
    "/api/show": {"post": _op("A model's details, GGUF metadata and chat template (Ollama API)",
                              errors=(400, 401, 404, 413, 415),
                              body={"type": "object", "required": ["model"], "properties": {
                                  "model": COMMON["model"], "verbose": _opt(BOOLEAN)}},
                              ok={"type": "object", "required": ["details", "model_info"]})},
    "/api/chat": {"post": _op(
        "Chat (Ollama API): NDJSON stream unless stream is false; no messages loads or (keep_alive 0) unloads",
        errors=GENERATION_ERRORS, ok=CHAT_LINE, ndjson=CHAT_LINE,
        body={"type": "object", "required": ["model"], "properties": {
            "messages": _opt(MESSAGES), "tools": _opt({"type": "array", "items": TOOL}), **COMMON}})},
    "/api/generate": {"post": _op(
        "Completion (Ollama API): the prompt through the chat template, or as it is with raw",
        errors=GENERATION_ERRORS, ok=GENERATE_LINE, ndjson=GENERATE_LINE,
        body={"type": "object", "required": ["model"], "properties": {
            "prompt": _opt(STRING), "system": _opt(STRING), "raw": _opt(BOOLEAN), "suffix": {"enum": [None, ""]},
            "template": {"enum": [None, ""]}, "context": NONE_OR_EMPTY, "images": NONE_OR_EMPTY,
            "tools": NONE_OR_EMPTY, **COMMON}})},
    "/api/embed": {"post": _op(
        "Embeddings (Ollama API)", errors=(400, 401, 404, 413, 415, 422, 503),
        body={"type": "object", "required": ["model", "input"], "properties": {
            "model": COMMON["model"],
            "input": {"oneOf": [STRING, {"type": "array", "items": STRING, "minItems": 1, "maxItems": 2048}]},
            "dimensions": _opt({"type": "integer", "minimum": 1}), "truncate": _opt(BOOLEAN),
            "keep_alive": KEEP_ALIVE, "options": _opt(OBJECT)}},
        ok={"type": "object", "required": ["model", "embeddings"], "properties": {
            "model": STRING, "embeddings": {"type": "array", "items": {"type": "array", "items": NUMBER}}}})},
    "/api/embeddings": {"post": _op(
        "One embedding (Ollama's legacy route)", errors=(400, 401, 404, 413, 415, 422, 503),
        body={"type": "object", "required": ["model", "prompt"], "properties": {
            "model": COMMON["model"], "prompt": STRING, "keep_alive": KEEP_ALIVE, "options": _opt(OBJECT)}},
        ok={"type": "object", "required": ["embedding"], "properties": {
            "embedding": {"type": "array", "items": NUMBER}}})},
}
