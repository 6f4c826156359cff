"""The model pool: resident local models within a memory budget, LRU eviction.

Sizes come from llama.cpp (the buffers it reports at load time); before a load, the pool makes
room using the file size plus a KV estimate, then records what llama.cpp actually allocated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from abi_tui.backends.llamacpp import LlamaBackend, LlamaOptions
from abi_tui.errors import ModelLoadError, Unavailable
from abi_tui.models.gguf_header import read_header

log = logging.getLogger(__name__)


@dataclass
class PoolCounters:
    loads: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    unloads: int = 0
    load_failures: int = 0
    load_ms_total: float = 0.0
    peak_bytes: int = 0


@dataclass
class Resident:
    backend: LlamaBackend
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    pinned: bool = False  # the active model is never evicted by keep_alive


def free_memory_bytes() -> int:
    """Free GPU memory when NVML sees a GPU, else available RAM."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            total = 0
            for i in range(pynvml.nvmlDeviceGetCount()):
                total += pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).free
            if total:
                return total
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no GPU: fall back to RAM
        pass
    return psutil.virtual_memory().available


def estimate_bytes(path: Path, options: LlamaOptions) -> int:
    """Weights plus the f16 KV cache for every sequence (and the one pinned prefixes are
    prefilled in), before llama.cpp says for sure."""
    header = read_header(path)
    layers = int(header.arch_value("block_count", 0) or 0)
    heads = int(header.arch_value("attention.head_count", 1) or 1)
    kv_heads = int(header.arch_value("attention.head_count_kv", heads) or heads)
    embd = int(header.arch_value("embedding_length", 0) or 0)
    key = int(header.arch_value("attention.key_length", embd // heads if heads else 0) or 0)
    value = int(header.arch_value("attention.value_length", key) or key)
    kv = layers * options.n_ctx * (options.parallel + 1) * kv_heads * (key + value) * 2
    return header.file_size + kv


def fit_parallel(path: Path, options: LlamaOptions, budget_bytes: int) -> tuple[LlamaOptions, int]:
    """`options` with `parallel` halved until the model and its KV cells fit the budget (at
    least 1), and their estimate: more sequences than memory allows would fail the load or
    evict everything else."""
    fitted = options
    need = estimate_bytes(path, fitted)
    while fitted.parallel > 1 and need > budget_bytes:
        fitted = replace(fitted, parallel=fitted.parallel // 2)
        need = estimate_bytes(path, fitted)
    if fitted.parallel != options.parallel:
        log.info("%s: %d parallel sequences instead of %d, to fit %d bytes", path.name, fitted.parallel,
                 options.parallel, budget_bytes)
    return fitted, need


class ModelPool:
    def __init__(self, options: LlamaOptions, *, max_loaded: int = 2, budget_bytes: int | None = None,
                 keep_alive_s: float | None = None,
                 publish: Callable[[str, dict[str, Any]], None] = lambda kind, data: None,
                 is_busy: Callable[[str], bool] = lambda name: False) -> None:
        self.options = options
        self.max_loaded = max(1, max_loaded)
        self.budget_bytes = budget_bytes if budget_bytes else int(free_memory_bytes() * 0.8)
        self.keep_alive_s = keep_alive_s
        self.publish = publish
        self.is_busy = is_busy
        self.resident: OrderedDict[str, Resident] = OrderedDict()
        self.loading: dict[str, asyncio.Future] = {}
        self.counters = PoolCounters()
        self.history: list[dict[str, Any]] = []  # loads and evictions, for the pool chart

    # --------------------------------------------------------------------------------- queries
    def get_resident(self, name: str) -> LlamaBackend | None:
        entry = self.resident.get(name)
        return entry.backend if entry else None

    def used_bytes(self) -> int:
        return sum(e.backend.memory.total for e in self.resident.values())

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "budget_bytes": self.budget_bytes,
            "used_bytes": self.used_bytes(),
            "max_loaded_models": self.max_loaded,
            "keep_alive_s": self.keep_alive_s,
            "models": [dict(e.backend.stats(), loaded_at=e.loaded_at, pinned=e.pinned,
                            idle_s=round(time.monotonic() - e.last_used, 1))
                       for e in self.resident.values()],
            "loading": sorted(self.loading),
            "loads": c.loads, "hits": c.hits, "misses": c.misses, "evictions": c.evictions,
            "unloads": c.unloads, "load_failures": c.load_failures,
            "load_ms_total": round(c.load_ms_total, 1), "peak_bytes": c.peak_bytes,
            "events": self.history[-50:],
        }

    # --------------------------------------------------------------------------------- loading
    async def get(self, name: str, path: Path, *, pin: bool = False, options: LlamaOptions | None = None) -> LlamaBackend:
        entry = self.resident.get(name)
        if entry is not None:
            self.counters.hits += 1
            entry.last_used = time.monotonic()
            entry.pinned = entry.pinned or pin
            self.resident.move_to_end(name)
            return entry.backend
        pending = self.loading.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        self.counters.misses += 1
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.loading[name] = future
        try:
            backend = await self._load(name, path, options or self.options, pin)
            future.set_result(backend)
            return backend
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self.loading.pop(name, None)

    async def _load(self, name: str, path: Path, options: LlamaOptions, pin: bool) -> LlamaBackend:
        options, need = await asyncio.to_thread(fit_parallel, path, options, self.budget_bytes)
        await self._make_room(need, exclude=name)
        self.publish("model.loading", {"model": name, "path": str(path)})
        started = time.perf_counter()
        try:
            backend = await asyncio.to_thread(LlamaBackend, path, name, options)
        except ModelLoadError as exc:
            self.counters.load_failures += 1
            self.publish("model.failed", {"model": name, "error": exc.message})
            raise
        except Exception as exc:  # llama.cpp surprises: still a clear message, not a traceback
            self.counters.load_failures += 1
            self.publish("model.failed", {"model": name, "error": str(exc)})
            raise ModelLoadError(f"could not load {path.name}: {exc}") from exc
        load_ms = (time.perf_counter() - started) * 1000
        self.resident[name] = Resident(backend, pinned=pin)
        self.counters.loads += 1
        self.counters.load_ms_total += load_ms
        self.counters.peak_bytes = max(self.counters.peak_bytes, self.used_bytes())
        self._record("load", name, backend.memory.total)
        self.publish("model.ready", {"model": name, "load_ms": round(load_ms, 1), "bytes": backend.memory.to_dict()})
        self.publish("pool.changed", self.summary())
        return backend

    async def _make_room(self, need: int, exclude: str) -> None:
        while self.resident and (len(self.resident) >= self.max_loaded or self.used_bytes() + need > self.budget_bytes):
            victim = next((n for n, e in self.resident.items() if n != exclude and not self.is_busy(n)), None)
            if victim is None:
                if len(self.resident) >= self.max_loaded:
                    raise Unavailable(f"every resident model is busy ({', '.join(self.resident)}); "
                                      "retry when a stream finishes", retry_after=2.0)
                break  # over budget but nothing idle: load anyway rather than fail
            await self.unload(victim, reason="evicted")

    async def unload(self, name: str, reason: str = "unloaded") -> None:
        entry = self.resident.pop(name, None)
        if entry is None:
            return
        await asyncio.to_thread(entry.backend.close)
        if reason == "evicted":
            self.counters.evictions += 1
        else:
            self.counters.unloads += 1
        self._record(reason, name, entry.backend.memory.total)
        self.publish("model.unloaded", {"model": name, "reason": reason})
        self.publish("pool.changed", self.summary())

    def pin(self, name: str, pinned: bool) -> None:
        entry = self.resident.get(name)
        if entry is not None:
            entry.pinned = pinned

    def touch(self, name: str) -> None:
        entry = self.resident.get(name)
        if entry is not None:
            entry.last_used = time.monotonic()
            self.resident.move_to_end(name)

    async def expire_idle(self) -> None:
        """Unload models idle longer than keep_alive (never the pinned active model)."""
        if self.keep_alive_s is None:
            return
        now = time.monotonic()
        for name, entry in list(self.resident.items()):
            if not entry.pinned and not self.is_busy(name) and now - entry.last_used > self.keep_alive_s:
                await self.unload(name, reason="expired")

    async def close(self) -> None:
        for name in list(self.resident):
            await self.unload(name, reason="shutdown")

    def summary(self) -> dict[str, Any]:
        return {"models": [{"model": n, "bytes": e.backend.memory.to_dict(), "pinned": e.pinned}
                           for n, e in self.resident.items()],
                "used_bytes": self.used_bytes(), "budget_bytes": self.budget_bytes}

    def _record(self, kind: str, name: str, size: int) -> None:
        self.history.append({"ts": time.time(), "event": kind, "model": name, "bytes": size})
        del self.history[:-200]
