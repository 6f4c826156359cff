"""The OpenAPI 3.1 document: one table of operations, filtered to the routes the app serves."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from abi_tui import __version__
from abi_tui.server import requests

ERROR = {"$ref": "#/components/schemas/Error"}
NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}
STRING = {"type": "string"}
BOOLEAN = {"type": "boolean"}
OBJECT = {"type": "object"}
# One server-sent event (what SSE clients, and schemathesis, check each event against).
SSE = {"text/event-stream": {"schema": {"type": "object", "properties": {
    "data": STRING, "event": STRING, "id": STRING, "retry": INTEGER}}}}

NULL = {"type": "null"}
NON_BLANK = {"type": "string", "minLength": 1, "pattern": "\\S"}  # the server strips, then needs text


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """Optional body fields: the server treats null as "not given"."""
    return {"anyOf": [schema, NULL]}


# What /api/models/pull downloads from the hub (an https:// URL is accepted too, undescribed
# here so that fuzzing never dials out): owner/repo[@rev][:QUANT | /file.gguf], hub-valid names.
_HUB_NAME = "[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,30}[A-Za-z0-9])?"
HUB_SPEC = (f"^(?!.*(?:--|\\.\\.))(?:hf://)?{_HUB_NAME}/{_HUB_NAME}"
            f"(?::[A-Za-z0-9_.-]{{1,20}}|/{_HUB_NAME}\\.gguf)?$")
HUB_REPO_SPEC = f"^(?!.*(?:--|\\.\\.))(?:hf://)?{_HUB_NAME}/{_HUB_NAME}(?::[A-Za-z0-9_.-]{{1,20}})?$"
USAGE = {"type": "object", "properties": {"prompt_tokens": INTEGER, "completion_tokens": INTEGER,
                                           "total_tokens": INTEGER}}


def _body(model: type) -> dict[str, Any]:
    """A request body described by its pydantic model (server/requests.py), in components."""
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _model_schemas() -> dict[str, Any]:
    """Each request model and everything it refers to, as OpenAPI components."""
    schemas: dict[str, Any] = {}
    for model in requests.REQUEST_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _op(summary: str, *, body: dict[str, Any] | None = None, ok: dict[str, Any] | None = None,
        ok_content: dict[str, Any] | None = None, errors: tuple[int, ...] = (400, 401),
        params: list[dict[str, Any]] | None = None, tag: str = "abi", ok_status: int = 200,
        body_required: bool = True, open_route: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {str(ok_status): {"description": "OK", "content": ok_content or _json(ok or OBJECT)}}
    for status in sorted({*errors, 403}):  # 403: a foreign Origin or Host (server/guard.py), on every route
        responses[str(status)] = {"description": "Error", "content": _json(ERROR)}
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": _json(body)}
    if params:
        op["parameters"] = params
    if open_route:
        op["security"] = []  # no token needed
    return op


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": STRING}


def _query_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


# 422: a model named by path that is not a usable GGUF; 5xx: backend and remote failures.
GENERATION_ERRORS = (400, 401, 404, 413, 415, 422, 429, 500, 502, 503, 504)

OPERATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "/health": {"get": _op("Server state", ok={"type": "object", "required": ["status", "state"], "properties": {
        "status": STRING, "state": {"type": "string", "enum": ["ready", "loading", "no_model", "error"]},
        "model": {"type": ["string", "null"]}, "active_streams": INTEGER, "queued": INTEGER,
        "uptime_s": NUMBER, "version": STRING}}, errors=(503,), tag="system", open_route=True)},
    "/v1/models": {"get": _op("Models: cached, personas, remote endpoints, mock patterns", ok={
        "type": "object", "required": ["object", "data"], "properties": {
            "object": STRING, "data": {"type": "array", "items": {"type": "object", "required": ["id", "object"]}}}},
        errors=(401,), tag="openai")},
    "/v1/chat/completions": {"post": _op(
        "Chat completion (OpenAI)", tag="openai", errors=GENERATION_ERRORS,
        body=_body(requests.ChatCompletionRequest),
        ok_content={**_json({"type": "object", "required": ["id", "choices", "usage"], "properties": {
            "id": STRING, "object": STRING, "created": INTEGER, "model": STRING,
            "choices": {"type": "array"}, "usage": USAGE}}), **SSE})},
    "/v1/completions": {"post": _op(
        "Text completion (OpenAI legacy)", tag="openai", errors=GENERATION_ERRORS,
        body=_body(requests.CompletionRequest),
        ok_content={**_json({"type": "object", "required": ["id", "choices", "usage"]}), **SSE})},
    "/v1/embeddings": {"post": _op(
        "Embeddings from the embedding model", tag="openai", errors=(400, 401, 404, 413, 415, 422, 503),
        body={"type": "object", "required": ["input"], "properties": {
            "input": {"oneOf": [STRING, {"type": "array", "items": STRING, "minItems": 1, "maxItems": 2048}]},
            "model": nullable(STRING), "encoding_format": {"type": "string", "enum": ["float", "base64"]}}},
        ok={"type": "object", "required": ["data", "usage"]})},
    "/api/stream": {"post": _op(
        "ABI SSE stream: abi.start, abi.token, abi.end, abi.error", errors=GENERATION_ERRORS,
        body=_body(requests.AbiStreamRequest),
        ok_content=SSE)},
    "/api/stream/ws": {"get": _op("ABI WebSocket stream (upgrade; a plain GET is a 400)", errors=(400, 401),
                                  ok_content=_json(OBJECT))},
    "/api/events": {"get": _op("Server events (SSE)", errors=(401,), ok_content=SSE,
                               params=[{"name": "since", "in": "query", "required": False, "schema": STRING}])},
    "/api/requests": {"get": _op("The recent request log (method, path, status, ms)", errors=(400, 401), params=[
        {"name": "since", "in": "query", "required": False, "schema": {"type": "number"}}],
        ok={"type": "object", "required": ["requests"], "properties": {"requests": {"type": "array"}}})},
    "/api/telemetry": {"get": _op("GPU, host and model-pool snapshot with history", errors=(400, 401), params=[
        {"name": "history", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}}])},
    "/api/models": {"get": _op("Cached models", errors=(401,))},
    "/api/models/pull": {"post": _op(
        "Download a model; streams progress events (SSE), or one JSON answer with stream=false",
        errors=(400, 401, 404, 409, 413, 415, 502, 503, 507), ok_content={**_json(OBJECT), **SSE},
        body={"type": "object", "required": ["model"], "properties": {
            "model": {"type": "string", "pattern": HUB_SPEC}, "quant": nullable(STRING),
            "sha256": nullable({"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}),
            "stream": nullable(BOOLEAN), "verify": nullable(BOOLEAN)},
            # a quant picks among a repo's files: it cannot go with one named file
            "dependentSchemas": {"quant": {"anyOf": [{"properties": {"quant": NULL}},
                                                     {"properties": {"model": {"pattern": HUB_REPO_SPEC}}}]}}})},
    "/api/models/{name}": {"delete": _op("Remove a cached model", errors=(401, 404, 409),
                                         params=[_path_param("name")])},
    "/api/v1/chat": {"post": _op("Persona chat, auto-routed (ABI SSE events, or JSON with stream=false)",
                                 errors=GENERATION_ERRORS, ok_content={**_json(OBJECT), **SSE},
                                 body=_body(requests.PersonaChatRequest))},
    "/api/v1/chat/{persona}": {"post": _op("Persona chat with a forced persona", errors=GENERATION_ERRORS,
                                           params=[{**_path_param("persona"), "schema": {
                                               "type": "string", "enum": ["abi", "abbey", "aviva"]}}],
                                           ok_content={**_json(OBJECT), **SSE},
                                           body=_body(requests.PersonaChatRequest))},
    "/api/v1/personas": {"get": _op("Persona catalogue", errors=(401,))},
    "/api/v1/personas/metrics": {"get": _op("Per-persona counters and latency percentiles", errors=(401,))},
    "/api/v1/personas/route": {"post": _op("Routing decision without generating", errors=(400, 401, 413, 415),
                                           body={"type": "object", "required": ["content"], "properties": {
                                               "content": STRING, "previous": {
                                                   "enum": ["abi", "abbey", "aviva", None]}}})},
    "/api/v1/conversations": {
        "get": _op("Conversations, most recent first", errors=(401,)),
        "post": _op("Create a conversation", errors=(400, 401, 413, 415), ok_status=201, body_required=False,
                    body={"type": "object", "properties": {"title": {"type": ["string", "null"]}}})},
    "/api/v1/conversations/{conversation_id}": {
        "get": _op("A conversation with its messages", errors=(401, 404), params=[_path_param("conversation_id")]),
        "patch": _op("Rename a conversation", errors=(400, 401, 404, 413, 415), params=[_path_param("conversation_id")],
                     body={"type": "object", "required": ["title"], "properties": {"title": NON_BLANK}}),
        "delete": _op("Delete a conversation", errors=(401, 404), params=[_path_param("conversation_id")])},
    "/api/v1/conversations/{conversation_id}/export": {
        "get": _op("A conversation as Markdown", errors=(401, 404), params=[_path_param("conversation_id")],
                   ok_content={"text/markdown": {"schema": STRING}})},
    "/api/v1/memory": {"get": _op("Remembered items, newest first", errors=(400, 401, 503), params=[
        _query_param("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
        _query_param("offset", {"type": "integer", "minimum": 0, "maximum": 10**9}),
        _query_param("conversation_id", STRING), _query_param("contains", STRING)])},
    "/api/v1/memory/search": {"get": _op("Recall: the items a message would bring into the prompt",
                                         errors=(400, 401, 503), params=[
        {**_query_param("q", NON_BLANK), "required": True},
        _query_param("k", {"type": "integer", "minimum": 1, "maximum": 50}),
        _query_param("mode", {"type": "string", "enum": ["fused", "bm25", "vectors"]})])},
    "/api/v1/memory/{item_id}": {"delete": _op("Forget one remembered item", errors=(401, 404, 503),
                                               params=[_path_param("item_id")])},
    "/api/v1/memory/reembed": {"post": _op("Embed every item the current embedding model lacks (SSE progress)",
                                           errors=(401, 503), ok_content=SSE, body_required=False)},
    "/admin/reload": {"post": _op("Hot model swap with drain and rollback", errors=(400, 401, 404, 409, 413, 415, 422, 500),
                                  body={"type": "object", "required": ["model"], "properties": {
                                      "model": NON_BLANK,
                                      "drain_timeout_s": {"type": "number", "minimum": 0, "maximum": 3600},
                                      "force": BOOLEAN, "n_ctx": {"anyOf": [NULL, {"type": "integer", "minimum": 16}]},
                                      "n_gpu_layers": {"anyOf": [NULL, {"type": "integer", "minimum": -1}]}}},
                                  tag="admin")},
    "/metrics": {"get": _op("Prometheus metrics", errors=(401,), ok_content={"text/plain": {"schema": STRING}},
                            tag="system")},
    "/openapi.json": {"get": _op("This document", errors=(401,), tag="system")},
}

COMPONENTS = {
    "schemas": {
        **_model_schemas(),
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
