"""Async entry points for the server's model routes: the blocking cache work runs in threads,
so the event loop keeps serving streams while a listing reads GGUF headers or a removal runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from abi_tui.models import cache, hub
from abi_tui.models.gguf_info import estimate_memory, read_summary
from abi_tui.models.pull import start_download
from abi_tui.models.spec import parse_spec


async def api_list_models(settings: Any, loaded: Iterable[str] = ()) -> list[dict[str, Any]]:
    models = await asyncio.to_thread(cache.list_models, settings, loaded=list(loaded))
    return [m.to_dict() for m in models]


async def api_model_info(settings: Any, name: str, loaded: Iterable[str] = ()) -> dict[str, Any]:
    def info() -> dict[str, Any]:
        model = cache.find_model(settings, name, cache.list_models(settings, loaded=list(loaded)))
        summary = model.summary or read_summary(model.files or [model.path])
        model.summary = summary
        return {**model.to_dict(), "memory_estimate": estimate_memory(summary, settings.server.n_ctx).to_dict()}

    return await asyncio.to_thread(info)


async def api_pull_events(settings: Any, spec: str, *, quant: str | None = None, sha256: str | None = None,
                          verify: bool = True) -> AsyncIterator[dict[str, Any]]:
    """Progress events of a download (joining one already running for the same spec), as
    dicts, ending with a `done`, `failed` or `cancelled` event. A client that stops reading
    does not stop the download: the next pull of the same spec follows it again."""
    parse_spec(spec)  # a malformed spec is a 400 before any stream starts
    handle = start_download(settings, spec, quant=quant, sha256=sha256, verify=verify)
    async for event in handle.events():
        yield {"id": handle.id, **event.to_dict()}


async def api_remove_model(settings: Any, name: str, loaded: Iterable[str]) -> dict[str, Any]:
    removed = await asyncio.to_thread(cache.remove_model, settings, name, loaded=list(loaded))
    return {"status": "ok", "removed": removed.name, "path": str(removed.path), "size": removed.size}


async def api_search(query: str, *, limit: int = 10, sort: hub.SearchSort = "downloads") -> list[dict[str, Any]]:
    results = await asyncio.to_thread(hub.search_gguf, query, limit=limit, sort=sort)
    return [r.to_dict() for r in results]
