"""The OpenAPI 3.1 document: one table of operations, filtered to the routes the app serves."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from abi_tui import __version__

ERROR = {"$ref": "#/components/schemas/Error"}
NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}
STRING = {"type": "string"}
BOOLEAN = {"type": "boolean"}
OBJECT = {"type": "object"}
SSE = {"text/event-stream": {"schema": STRING}}

MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
        "content": {"type": "string"},
    },
}
SAMPLING = {
    "model": STRING,
    "max_tokens": {"type": "integer", "minimum": 1},
    "max_completion_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "minimum": 0},
    "min_p": {"type": "number", "minimum": 0, "maximum": 1},
    "stop": {"oneOf": [STRING, {"type": "array", "items": STRING, "maxItems": 16}]},
    "seed": INTEGER,
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "logit_bias": {"type": "object", "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}},
    "response_format": {"type": "object", "properties": {"type": {"type": "string", "enum": ["text", "json_object"]}}},
    "n": {"type": "integer", "minimum": 1, "maximum": 1},
    "stream": BOOLEAN,
    "stream_options": {"type": "object", "properties": {"include_usage": BOOLEAN}},
}
USAGE = {"type": "object", "properties": {"prompt_tokens": INTEGER, "completion_tokens": INTEGER,
                                           "total_tokens": INTEGER}}


PERSONA_CHAT = {"type": "object", "required": ["content"], "properties": {
    "content": STRING, "conversation_id": STRING, **SAMPLING}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _op(summary: str, *, body: dict[str, Any] | None = None, ok: dict[str, Any] | None = None,
        ok_content: dict[str, Any] | None = None, errors: tuple[int, ...] = (400, 401),
        params: list[dict[str, Any]] | None = None, tag: str = "abi") -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", "content": ok_content or _json(ok or OBJECT)}}
    for status in errors:
        responses[str(status)] = {"description": "Error", "content": _json(ERROR)}
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json(body)}
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": STRING}


GENERATION_ERRORS = (400, 401, 404, 413, 415, 429, 500, 502, 503, 504)

OPERATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "/health": {"get": _op("Server state", ok={"type": "object", "required": ["status", "state"], "properties": {
        "status": STRING, "state": {"type": "string", "enum": ["ready", "loading", "no_model", "error"]},
        "model": {"type": ["string", "null"]}, "active_streams": INTEGER, "queued": INTEGER,
        "uptime_s": NUMBER, "version": STRING}}, errors=(503,), tag="system")},
    "/v1/models": {"get": _op("Models: cached, personas, remote endpoints, mock patterns", ok={
        "type": "object", "required": ["object", "data"], "properties": {
            "object": STRING, "data": {"type": "array", "items": {"type": "object", "required": ["id", "object"]}}}},
        errors=(401,), tag="openai")},
    "/v1/chat/completions": {"post": _op(
        "Chat completion (OpenAI)", tag="openai", errors=GENERATION_ERRORS,
        body={"type": "object", "required": ["messages"], "properties": {
            "messages": {"type": "array", "minItems": 1, "items": MESSAGE}, **SAMPLING}},
        ok_content={**_json({"type": "object", "required": ["id", "choices", "usage"], "properties": {
            "id": STRING, "object": STRING, "created": INTEGER, "model": STRING,
            "choices": {"type": "array"}, "usage": USAGE}}), **SSE})},
    "/v1/completions": {"post": _op(
        "Text completion (OpenAI legacy)", tag="openai", errors=GENERATION_ERRORS,
        body={"type": "object", "required": ["prompt"], "properties": {"prompt": STRING, **SAMPLING}},
        ok_content={**_json({"type": "object", "required": ["id", "choices", "usage"]}), **SSE})},
    "/v1/embeddings": {"post": _op(
        "Embeddings from the embedding model", tag="openai", errors=(400, 401, 404, 413, 415, 503),
        body={"type": "object", "required": ["input"], "properties": {
            "input": {"oneOf": [STRING, {"type": "array", "items": STRING, "minItems": 1}]},
            "model": STRING, "encoding_format": {"type": "string", "enum": ["float", "base64"]}}},
        ok={"type": "object", "required": ["data", "usage"]})},
    "/api/stream": {"post": _op(
        "ABI SSE stream: abi.start, abi.token, abi.end, abi.error", errors=GENERATION_ERRORS,
        body={"type": "object", "properties": {"prompt": STRING, "messages": {"type": "array", "items": MESSAGE},
                                               "persona": STRING, **SAMPLING}},
        ok_content=SSE)},
    "/api/stream/ws": {"get": _op("ABI WebSocket stream (upgrade)", errors=(401,), ok_content=_json(OBJECT))},
    "/api/events": {"get": _op("Server events (SSE)", errors=(401,), ok_content=SSE,
                               params=[{"name": "since", "in": "query", "required": False, "schema": STRING}])},
    "/api/telemetry": {"get": _op("GPU, host and model-pool snapshot with history", errors=(401,))},
    "/api/models": {"get": _op("Cached models", errors=(401,))},
    "/api/models/pull": {"post": _op("Download a model; streams progress events", errors=(400, 401, 404, 413, 415),
                                     body={"type": "object", "required": ["model"], "properties": {
                                         "model": STRING, "quant": STRING, "sha256": STRING, "stream": BOOLEAN}})},
    "/api/models/{name}": {"delete": _op("Remove a cached model", errors=(401, 404, 409),
                                         params=[_path_param("name")])},
    "/api/v1/chat": {"post": _op("Persona chat, auto-routed (ABI SSE events, or JSON with stream=false)",
                                 errors=GENERATION_ERRORS, ok_content={**_json(OBJECT), **SSE},
                                 body=PERSONA_CHAT)},
    "/api/v1/chat/{persona}": {"post": _op("Persona chat with a forced persona", errors=GENERATION_ERRORS,
                                           params=[_path_param("persona")], ok_content={**_json(OBJECT), **SSE},
                                           body=PERSONA_CHAT)},
    "/api/v1/personas": {"get": _op("Persona catalogue", errors=(401,))},
    "/api/v1/personas/metrics": {"get": _op("Per-persona counters and latency percentiles", errors=(401,))},
    "/api/v1/personas/route": {"post": _op("Routing decision without generating", errors=(400, 401, 413, 415),
                                           body={"type": "object", "required": ["content"], "properties": {
                                               "content": STRING, "previous": STRING}})},
    "/api/v1/conversations": {
        "get": _op("Conversations, most recent first", errors=(401,)),
        "post": _op("Create a conversation", errors=(400, 401, 413, 415),
                    body={"type": "object", "properties": {"title": STRING}})},
    "/api/v1/conversations/{conversation_id}": {
        "get": _op("A conversation with its messages", errors=(401, 404), params=[_path_param("conversation_id")]),
        "patch": _op("Rename a conversation", errors=(400, 401, 404, 413, 415), params=[_path_param("conversation_id")],
                     body={"type": "object", "required": ["title"], "properties": {"title": STRING}}),
        "delete": _op("Delete a conversation", errors=(401, 404), params=[_path_param("conversation_id")])},
    "/api/v1/conversations/{conversation_id}/export": {
        "get": _op("A conversation as Markdown", errors=(401, 404), params=[_path_param("conversation_id")],
                   ok_content={"text/markdown": {"schema": STRING}})},
    "/admin/reload": {"post": _op("Hot model swap with drain and rollback", errors=(400, 401, 404, 409, 413, 415, 422, 500),
                                  body={"type": "object", "required": ["model"], "properties": {
                                      "model": STRING, "drain_timeout_s": {"type": "number", "minimum": 0, "maximum": 3600},
                                      "force": BOOLEAN, "n_ctx": {"type": "integer", "minimum": 16},
                                      "n_gpu_layers": INTEGER}}, tag="admin")},
    "/metrics": {"get": _op("Prometheus metrics", errors=(401,), ok_content={"text/plain": {"schema": STRING}},
                            tag="system")},
    "/openapi.json": {"get": _op("This document", errors=(401,), tag="system")},
}

COMPONENTS = {
    "schemas": {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["message", "type"], "properties": {
                "message": STRING, "type": STRING, "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]}}}}},
    },
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
}


def openapi_document(app: web.Application) -> dict[str, Any]:
    served: dict[str, set[str]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path:
            served.setdefault(path, set()).add(route.method.lower())
    paths = {}
    for path, operations in OPERATIONS.items():
        methods = {m: op for m, op in operations.items() if m in served.get(path, ())}
        if methods:
            paths[path] = methods
    return {
        "openapi": "3.1.0",
        "info": {"title": "abi_tui server", "version": __version__,
                 "description": "OpenAI-compatible inference, ABI streaming, personas, models and telemetry."},
        "paths": paths,
        "components": COMPONENTS,
        "security": [{"bearer": []}],
    }
