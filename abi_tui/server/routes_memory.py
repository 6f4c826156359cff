"""Memory routes: list, search and forget remembered items; re-embed them for a new model.

    GET    /api/v1/memory                ?limit=&offset=&conversation_id=&contains=
    GET    /api/v1/memory/search         ?q=&k=5&mode=fused|bm25|vectors
    DELETE /api/v1/memory/{item_id}      forget one item (404 when it is not remembered)
    POST   /api/v1/memory/reembed        embed every item the current model's collection lacks;
                                         SSE `progress` {done, total} then `done` {added, model}

Every store call blocks (SQLite, chromadb, llama.cpp), so each runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from abi_tui.errors import AbiError, InvalidRequest, Unavailable
from abi_tui.server.persona_chat import PersonaService
from abi_tui.server.sse import DONE_FRAME, open_sse, sse_frame
from abi_tui.server.state import state_of
from abi_tui.server.streaming import ClientStalled, write_deadline


class MemoryItemNotFound(AbiError):
    status = 404
    code = "memory_item_not_found"


class MemoryFailed(AbiError):
    status = 500
    type = "server_error"
    code = "memory_error"


def _service(request: web.Request) -> PersonaService:
    return state_of(request).services["personas"]


async def _memory(request: web.Request, *, load: bool = False):
    memory = await _service(request).ensure_memory(load=load)
    if memory is None:
        raise Unavailable("memory is not open yet (the chat store is starting)", retry_after=1)
    return memory


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be an integer", param=name) from None
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low} and {high}", param=name)
    return value


def _status(service: PersonaService, memory) -> dict:
    """`dedicated`: memory embeds with a model made for it (the configured embedding model, else the
    packaged sentence encoder when installed), not with the chat model's hidden states; known
    before memory has bound to it."""
    from abi_tui.models.sentence_model import NAME, source_dir

    configured = bool(service.settings.vector_store.embedding_model)
    return {"state": service.memory_state, "error": service.memory_error,
            "embedding_model": memory.model,
            "dedicated": configured or memory.model == NAME or source_dir() is not None}


async def list_items(request: web.Request) -> web.Response:
    service = _service(request)
    memory = await _memory(request)
    limit = _int_param(request, "limit", 50, 1, 1000)
    offset = _int_param(request, "offset", 0, 0, 10**9)
    items, total = await asyncio.to_thread(
        memory.items.list, limit=limit, offset=offset,
        conversation_id=request.query.get("conversation_id") or None,
        contains=request.query.get("contains") or None)
    return web.json_response({"items": [i.to_dict() for i in items], "total": total,
                              **_status(service, memory)})


async def search(request: web.Request) -> web.Response:
    from abi_tui.memory.recall import MODES

    service = _service(request)
    query = request.query.get("q", "")
    if not query.strip():
        raise InvalidRequest("'q' (the text to recall for) is required", param="q")
    mode = request.query.get("mode", "fused")
    if mode not in MODES:
        raise InvalidRequest(f"'mode' must be one of {', '.join(MODES)}", param="mode")
    k = _int_param(request, "k", 5, 1, 50)
    memory = await _memory(request, load=True)
    hits, timings = await asyncio.to_thread(memory.search_timed, query, k=k, mode=mode)
    return web.json_response({"hits": [h.to_dict() for h in hits], "timings": timings.to_dict(),
                              **_status(service, memory)})


async def forget(request: web.Request) -> web.Response:
    memory = await _memory(request)
    item_id = request.match_info["item_id"]
    forgotten = await asyncio.to_thread(memory.forget, [item_id])
    if not forgotten:
        raise MemoryItemNotFound(f"no remembered item {item_id!r}", param="item_id")
    return web.json_response({"deleted": item_id})


async def reembed(request: web.Request) -> web.StreamResponse:
    memory = await _memory(request, load=True)
    if memory.vectors is None:
        service = _service(request)
        raise Unavailable(service.memory_error or "no embedding model is available", retry_after=5)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    def progress(done: int, total: int) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (done, total))

    work = asyncio.ensure_future(asyncio.to_thread(memory.sync_vectors, progress))
    response = await open_sse(request)
    deadline = write_deadline(request)
    try:
        while not (work.done() and queue.empty()):
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                done, total = getter.result()
                await deadline.write(response, sse_frame({"done": done, "total": total}, event="progress"))
            else:
                getter.cancel()
        try:
            added = work.result()
            await deadline.write(response, sse_frame({"added": added, "model": memory.model}, event="done"))
        except Exception as exc:  # the store or the model failed: say so in the stream
            error = exc if isinstance(exc, AbiError) else MemoryFailed(str(exc))
            await deadline.write(response, sse_frame(error.to_dict(), event="error"))
        await deadline.write(response, DONE_FRAME)
    except (ClientStalled, ConnectionResetError):
        pass  # the client left; the work finishes on its own (it is idempotent)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(work)
    return response


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/memory", list_items)
    app.router.add_get("/api/v1/memory/search", search)
    app.router.add_post("/api/v1/memory/reembed", reembed)
    app.router.add_delete("/api/v1/memory/{item_id}", forget)
