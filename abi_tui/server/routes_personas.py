"""Persona routes: chat auto-routed or forced, the catalogue, metrics, the routing
decision alone, and the conversations the Chat pane lists."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from abi_tui.backends.base import GenerationRequest
from abi_tui.backends.engine import new_request_id
from abi_tui.errors import AbiError, InvalidRequest
from abi_tui.personas import catalogue_dict
from abi_tui.server.parse import read_json, sampling_params, stream_flags
from abi_tui.server.persona_chat import PersonaChat, PersonaService
from abi_tui.server.routes_stream import AbiSseEncoder, end_payload
from abi_tui.server.sse import sse_frame
from abi_tui.server.state import ServerState, state_of
from abi_tui.server.streaming import pump_sse


def service_of(request: web.Request) -> PersonaService:
    return state_of(request).services["personas"]


class PersonaSseEncoder(AbiSseEncoder):
    """ABI SSE events, with the conversation ids on abi.start and the answer saved as it streams."""

    def __init__(self, service: PersonaService, turn: PersonaChat) -> None:
        super().__init__(turn.decision.to_dict())
        self.service = service
        self.turn = turn
        self.text: list[str] = []

    def start(self, stream) -> bytes:
        frame = super().start(stream)
        extra = {"conversation_id": self.turn.conversation_id, "message_id": self.turn.assistant_message_id,
                 "memory": self.turn.memory}
        return frame + sse_frame(extra, event="abi.context", event_id=self._next_id())

    def tokens(self, stream, pieces: list[str]) -> bytes:
        self.text.extend(pieces)
        self.service.record_pieces(self.turn, pieces)
        return super().tokens(stream, pieces)


async def persona_chat(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    service = service_of(request)
    body = await read_json(request, state.settings.server.max_body_bytes)
    forced = request.match_info.get("persona")
    content = body.get("content")
    if not isinstance(content, str) or not content.strip():
        raise InvalidRequest("'content' (the user's message) is required", param="content")
    streaming, _ = stream_flags({"stream": body.get("stream", True)})
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("'model' must be a string", param="model")
    generation = GenerationRequest(model=model,
                                   messages=[{"role": "user", "content": content}], params=sampling_params(body),
                                   request_id=new_request_id(), route="persona")
    turn = await service.open_turn(body, forced, generation)
    if streaming:
        encoder = PersonaSseEncoder(service, turn)
        try:
            response = await pump_sse(request, turn.stream, encoder)
        finally:
            # Shielded: a client that closes the connection as soon as it has read the end
            # cancels this handler, and the turn must still be saved and remembered.
            await asyncio.shield(service.finish_turn(turn, "".join(encoder.text)))
        return response
    pieces: list[str] = []
    try:
        async for item in turn.stream.events(None):
            if isinstance(item, list):
                pieces.extend(item)
                service.record_pieces(turn, item)
    finally:
        if not turn.stream.channel.closed:
            turn.stream.cancel()
        await asyncio.shield(service.finish_turn(turn, "".join(pieces)))
    if turn.stream.error is not None:
        raise turn.stream.error
    return web.json_response({"conversation_id": turn.conversation_id, "message_id": turn.assistant_message_id,
                              "persona": turn.decision.persona, "routing": turn.decision.to_dict(),
                              "model": turn.stream.model, "content": "".join(pieces), "memory": turn.memory,
                              **end_payload(turn.stream)})


async def personas(request: web.Request) -> web.Response:
    return web.json_response(catalogue_dict())


async def persona_metrics(request: web.Request) -> web.Response:
    return web.json_response(service_of(request).metrics.snapshot())


async def route_only(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json(request, state.settings.server.max_body_bytes)
    content = body.get("content")
    if not isinstance(content, str):
        raise InvalidRequest("'content' must be a string", param="content")
    previous = body.get("previous")
    if previous is not None and previous not in ("abi", "abbey", "aviva"):
        raise InvalidRequest("'previous' must be abi, abbey or aviva", param="previous")
    decision, cleaned = await service_of(request).route(content, previous=previous)
    return web.json_response({**decision.to_dict(), "content": cleaned})


# ------------------------------------------------------------------------------ conversations
async def list_conversations(request: web.Request) -> web.Response:
    chats = service_of(request)._store()
    items = [c.to_dict() for c in chats.list_conversations(limit=500)]
    return web.json_response({"conversations": items})


async def create_conversation(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json(request, state.settings.server.max_body_bytes) if request.body_exists else {}
    title = body.get("title")
    if title is not None and not isinstance(title, str):
        raise InvalidRequest("'title' must be a string", param="title")
    conversation = service_of(request)._store().create_conversation(title)
    return web.json_response(conversation.to_dict(), status=201)


async def get_conversation(request: web.Request) -> web.Response:
    chats = service_of(request)._store()
    conversation_id = request.match_info["conversation_id"]
    conversation = chats.get_conversation(conversation_id)
    messages = [m.to_dict() for m in chats.messages(conversation_id)]
    return web.json_response({**conversation.to_dict(), "messages": messages})


async def rename_conversation(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json(request, state.settings.server.max_body_bytes)
    title = body.get("title")
    if not isinstance(title, str) or not title.strip():
        raise InvalidRequest("'title' must be a non-empty string", param="title")
    chats = service_of(request)._store()
    return web.json_response(chats.rename_conversation(request.match_info["conversation_id"], title.strip()).to_dict())


async def delete_conversation(request: web.Request) -> web.Response:
    chats = service_of(request)._store()
    conversation_id = request.match_info["conversation_id"]
    chats.get_conversation(conversation_id)  # 404 when it does not exist
    chats.delete_conversation(conversation_id)
    return web.json_response({"deleted": conversation_id})


async def export_conversation(request: web.Request) -> web.Response:
    chats = service_of(request)._store()
    text = chats.export_markdown(request.match_info["conversation_id"])
    return web.Response(text=text, content_type="text/markdown")


def persona_metric_families(service: PersonaService) -> list[Any]:
    snapshot = service.metrics.snapshot()["personas"]
    requests = CounterMetricFamily("abi_persona_requests", "Requests by persona", labels=["persona"])
    errors = CounterMetricFamily("abi_persona_errors", "Failed requests by persona", labels=["persona"])
    latency = GaugeMetricFamily("abi_persona_latency_ms", "Persona latency percentiles over the last 1000",
                                labels=["persona", "quantile"])
    for persona, stats in snapshot.items():
        requests.add_metric([persona], stats["requests"])
        errors.add_metric([persona], stats["errors"])
        for quantile in ("p50", "p90", "p99"):
            value = stats["latency_ms"].get(quantile)
            if value is not None:
                latency.add_metric([persona, quantile], value)
    return [requests, errors, latency]


def attach(state: ServerState) -> None:
    service = PersonaService(state.settings, state.engine)
    state.services["personas"] = service
    state.services["persona_hook"] = service.hook
    state.services.setdefault("metric_collectors", []).append(lambda: persona_metric_families(service))

    async def start(_: ServerState) -> None:
        try:
            await service.start()
        except AbiError as exc:
            state.engine.publish("chats.failed", {"error": exc.message})

    async def stop(_: ServerState) -> None:
        await service.stop()

    state.services.setdefault("startup", []).append(start)
    state.services.setdefault("cleanup", []).append(stop)


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/chat", persona_chat)
    app.router.add_post("/api/v1/chat/{persona}", persona_chat)
    app.router.add_get("/api/v1/personas", personas)
    app.router.add_get("/api/v1/personas/metrics", persona_metrics)
    app.router.add_post("/api/v1/personas/route", route_only)
    app.router.add_get("/api/v1/conversations", list_conversations)
    app.router.add_post("/api/v1/conversations", create_conversation)
    app.router.add_get("/api/v1/conversations/{conversation_id}", get_conversation)
    app.router.add_patch("/api/v1/conversations/{conversation_id}", rename_conversation)
    app.router.add_delete("/api/v1/conversations/{conversation_id}", delete_conversation)
    app.router.add_get("/api/v1/conversations/{conversation_id}/export", export_conversation)
