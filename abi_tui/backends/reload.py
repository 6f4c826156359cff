"""Hot model swap: validate, hold new generations, drain, swap, roll back on failure.

The previous model stays resident while the pool's budget allows, so a failed load rolls back
without reloading, and swapping back is instant; the pool evicts it when room is needed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING, Any

from abi_tui.backends.scheduler import ACTIVE_LANE
from abi_tui.errors import AbiError
from abi_tui.models.gguf_header import read_header

if TYPE_CHECKING:
    from abi_tui.backends.engine import InferenceEngine


class ReloadConflict(AbiError):
    status = 409
    code = "reload_conflict"


class ReloadFailed(AbiError):
    status = 500
    type = "server_error"
    code = "reload_failed"


async def hot_reload(engine: InferenceEngine, spec: str, *, drain_timeout_s: float = 30.0, force: bool = False,
                     n_ctx: int | None = None, n_gpu_layers: int | None = None) -> dict[str, Any]:
    if engine.reload_lock.locked():
        raise ReloadConflict("a reload is already in progress; wait for its outcome on /api/events")
    async with engine.reload_lock:
        return await _reload(engine, spec, drain_timeout_s, force, n_ctx, n_gpu_layers)


async def _reload(engine: InferenceEngine, spec: str, drain_timeout_s: float, force: bool,
                  n_ctx: int | None, n_gpu_layers: int | None) -> dict[str, Any]:
    publish = engine.publish
    name, path = engine.resolve_path(spec)
    previous, previous_path = engine.active_name, engine.active_path
    publish("reload.started", {"model": name, "previous_model": previous})
    try:
        await asyncio.to_thread(read_header, path)  # before anything running is touched
    except AbiError as exc:
        publish("reload.failed", {"model": name, "stage": "validate", "error": exc.message})
        raise
    options = engine.options
    if n_ctx is not None or n_gpu_layers is not None:
        options = dataclasses.replace(options, n_ctx=n_ctx or options.n_ctx,
                                      n_gpu_layers=options.n_gpu_layers if n_gpu_layers is None else n_gpu_layers)

    lane = engine.pause_active()
    drained = cancelled = 0
    try:
        running = [s for s in engine.streams if s.target.lane == ACTIVE_LANE and not s.queued]
        if running:
            publish("reload.draining", {"streams": len(running), "timeout_s": drain_timeout_s})
            try:
                await asyncio.wait_for(lane.idle.wait(), drain_timeout_s)
                drained = len(running)
            except TimeoutError:
                if not force:
                    publish("reload.failed", {"model": name, "stage": "drain",
                                              "error": f"{lane.active} streams still running"})
                    raise ReloadConflict(
                        f"{lane.active} streams were still running after {drain_timeout_s:g} s; the current "
                        "model keeps serving. Retry later, raise drain_timeout_s, or send force=true") from None
                still = [s for s in running if not s.channel.closed]
                for stream in still:
                    stream.cancel()
                cancelled = len(still)
                drained = len(running) - cancelled
                await asyncio.wait_for(lane.idle.wait(), 10)
                publish("reload.cancelled", {"streams": cancelled})
            publish("reload.drained", {"drained": drained, "cancelled": cancelled})

        resident = engine.pool.get_resident(name)
        if resident is not None and resident.options != options:
            await engine.pool.unload(name, reason="reconfigured")
            resident = None
        started = time.perf_counter()
        if resident is None:
            publish("reload.loading", {"model": name})
            if previous:
                engine.pool.pin(previous, False)
            try:
                await engine.pool.get(name, path, pin=True, options=options)
            except AbiError as exc:
                rollback = await _roll_back(engine, previous, previous_path)
                publish("reload.failed", {"model": name, "stage": "load", "error": exc.message,
                                          "rolled_back_to": previous, "rollback_error": rollback})
                message = f"could not load {name}: {exc.message}"
                message += (f"; rolled back to {previous}" if previous and rollback is None
                            else f"; rollback to {previous} also failed: {rollback}" if previous else "")
                raise ReloadFailed(message) from None
        load_ms = (time.perf_counter() - started) * 1000
        engine.set_active(name, path)
        result = {"status": "ok", "previous_model": previous, "model": name, "load_ms": round(load_ms, 1),
                  "drained": drained, "cancelled": cancelled, "resident": resident is not None}
        publish("reload.done", result)
        return result
    finally:
        engine.resume_active()


async def _roll_back(engine: InferenceEngine, previous: str | None, previous_path: Any) -> str | None:
    """Put the previous model back; returns an error message, or None when it serves again."""
    if previous is None:
        engine.set_active(None, None)
        return None
    try:
        await engine.pool.get(previous, previous_path, pin=True)
    except AbiError as exc:
        engine.set_active(None, None)
        engine.state, engine.last_error = "error", exc.message
        return exc.message
    engine.set_active(previous, previous_path)
    engine.publish("reload.rolled_back", {"model": previous})
    return None
