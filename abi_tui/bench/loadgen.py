"""Load profiles: closed loop at a concurrency, open loop at a constant or Poisson rate, and the
concurrency sweep; each phase bounded by a request count, a duration, or both.

Closed loop: N workers, each sends its next request when its previous one ends (the load
adapts to the server). Open loop: requests leave on a schedule whatever the server does (the
load does not), so queueing shows up in TTFT; each record keeps its scheduled time, and the lag
between schedule and send is reported so an overloaded client cannot hide.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from abi_tui.bench.records import RequestRecord, RequestSpec, now
from abi_tui.bench.transports import Transport

LOAD_KINDS = ("concurrency", "rate", "poisson", "sweep")
# Sweep: double the concurrency until the aggregate output rate gains less than this fraction
# over the best level so far, an error appears, or the cap is reached.
SWEEP_MIN_GAIN = 0.05
SWEEP_MAX_CONCURRENCY = 256

SpecFor = Callable[[int], RequestSpec]
OnRecord = Callable[[RequestRecord], None]


@dataclass(frozen=True)
class LoadSpec:
    kind: str = "concurrency"
    # Concurrency for `concurrency`, requests per second for `rate` and `poisson`, the first
    # level for `sweep`.
    value: float = 1

    def __post_init__(self) -> None:
        if self.kind not in LOAD_KINDS:
            raise ValueError(f"unknown load {self.kind!r} (known: {', '.join(LOAD_KINDS)})")
        if not self.value > 0 or not math.isfinite(self.value):
            raise ValueError(f"the load's value must be a positive number, got {self.value}")

    def describe(self) -> str:
        if self.kind == "concurrency":
            return f"closed loop, concurrency {int(self.value)}"
        if self.kind == "rate":
            return f"open loop, constant {self.value:g} req/s"
        if self.kind == "poisson":
            return f"open loop, Poisson {self.value:g} req/s"
        return f"sweep from concurrency {int(self.value)}, doubling"

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "value": self.value, "description": self.describe()}


async def run_one(transport: Transport, spec: RequestSpec, scheduled_at: float | None = None) -> RequestRecord:
    record = RequestRecord(index=spec.index, max_tokens=spec.max_tokens, seed=spec.seed,
                           scheduled_at=scheduled_at)
    try:
        await transport.send(spec, record)
    except Exception as exc:  # a transport bug must cost one request, not the run
        record.error = f"client: {exc.__class__.__name__}: {exc}"
        if not record.sent_at:
            record.sent_at = now()
        record.ended_at = now()
    return record


def _check_bounds(requests: int | None, duration_s: float | None) -> None:
    if requests is None and duration_s is None:
        raise ValueError("a phase needs a request count, a duration, or both")


async def closed_loop(transport: Transport, spec_for: SpecFor, concurrency: int, *,
                      requests: int | None = None, duration_s: float | None = None,
                      on_record: OnRecord | None = None) -> list[RequestRecord]:
    """`concurrency` requests in flight until `requests` were sent or `duration_s` is over."""
    _check_bounds(requests, duration_s)
    deadline = now() + duration_s if duration_s is not None else None
    counter = itertools.count()
    records: list[RequestRecord] = []

    async def worker() -> None:
        while True:
            k = next(counter)
            if requests is not None and k >= requests:
                return
            if deadline is not None and now() >= deadline:
                return
            record = await run_one(transport, spec_for(k))
            records.append(record)
            if on_record is not None:
                on_record(record)

    workers = concurrency if requests is None else min(concurrency, requests)
    await asyncio.gather(*(worker() for _ in range(max(1, workers))))
    records.sort(key=lambda r: r.index)
    return records


def arrival_offsets(kind: str, rate: float, seed: int = 0) -> Iterator[float]:
    """Send times in seconds from the phase's start: k / rate, or a Poisson process."""
    if kind == "rate":
        for k in itertools.count():
            yield k / rate
    elif kind == "poisson":
        rng = random.Random(seed)
        offset = 0.0
        while True:
            yield offset
            offset += rng.expovariate(rate)
    else:
        raise ValueError(f"not an open-loop load: {kind!r}")


async def open_loop(transport: Transport, spec_for: SpecFor, kind: str, rate: float, *,
                    requests: int | None = None, duration_s: float | None = None,
                    seed: int = 0, on_record: OnRecord | None = None) -> list[RequestRecord]:
    """Send on the schedule, not waiting for answers; then wait for every answer."""
    _check_bounds(requests, duration_s)
    start = now()
    tasks: list[asyncio.Task[RequestRecord]] = []

    async def one(spec: RequestSpec, at: float) -> RequestRecord:
        record = await run_one(transport, spec, scheduled_at=at)
        if on_record is not None:
            on_record(record)
        return record

    try:
        for k, offset in enumerate(arrival_offsets(kind, rate, seed)):
            if requests is not None and k >= requests:
                break
            if duration_s is not None and offset >= duration_s:
                break
            at = start + offset
            delay = at - now()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(spec_for(k), at)))
        records = list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
    records.sort(key=lambda r: r.index)
    return records


async def run_load(transport: Transport, spec_for: SpecFor, load: LoadSpec, *,
                   requests: int | None, duration_s: float | None, seed: int = 0,
                   on_record: OnRecord | None = None) -> list[RequestRecord]:
    """One phase at a fixed load (a sweep runs this once per level)."""
    if load.kind in ("concurrency", "sweep"):
        return await closed_loop(transport, spec_for, int(load.value), requests=requests,
                                 duration_s=duration_s, on_record=on_record)
    return await open_loop(transport, spec_for, load.kind, load.value, requests=requests,
                           duration_s=duration_s, seed=seed, on_record=on_record)


def sweep_levels(start: int = 1, cap: int = SWEEP_MAX_CONCURRENCY) -> Iterator[int]:
    level = max(1, start)
    while level <= cap:
        yield level
        level *= 2


def sweep_verdict(throughputs: list[float], errors: int) -> str | None:
    """Why the sweep stops after the latest level, or None to go on."""
    if errors:
        return f"errors appeared ({errors})"
    if len(throughputs) >= 2:
        best_before = max(throughputs[:-1])
        if throughputs[-1] < best_before * (1 + SWEEP_MIN_GAIN):
            return (f"throughput stopped rising ({throughputs[-1]:.1f} tok/s vs best "
                    f"{best_before:.1f} tok/s; needs +{SWEEP_MIN_GAIN:.0%})")
    return None
