"""Load profiles and scenario plans, against a fake transport (no server, no timing asserts)."""

from __future__ import annotations

import asyncio
import itertools
import statistics

import pytest

from abi_tui.bench import loadgen
from abi_tui.bench.loadgen import LoadSpec, arrival_offsets, closed_loop, open_loop, sweep_verdict
from abi_tui.bench.records import RequestRecord, RequestSpec, now
from abi_tui.bench.runner import BenchConfig, plan_scenarios


class FakeTransport:
    """Streams `max_tokens` tokens with a short sleep each; tracks how many are in flight."""

    name = "fake"

    def __init__(self, fail_every: int = 0, token_s: float = 0.001) -> None:
        self.token_s = token_s
        self.in_flight = 0
        self.peak = 0
        self.sent: list[RequestSpec] = []
        self.fail_every = fail_every

    async def send(self, spec: RequestSpec, record: RequestRecord) -> None:
        self.sent.append(spec)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        record.sent_at = now()
        try:
            if self.fail_every and (spec.index + 1) % self.fail_every == 0:
                record.error = "503 unavailable: busy"
                return
            for _ in range(spec.max_tokens):
                await asyncio.sleep(self.token_s)
                record.token_times.append(now())
        finally:
            record.ended_at = now()
            self.in_flight -= 1

    async def close(self) -> None:
        pass


def spec_for(k: int) -> RequestSpec:
    return RequestSpec(index=k, model="fake", prompt="p", max_tokens=3)


async def test_closed_loop_keeps_exactly_n_in_flight() -> None:
    transport = FakeTransport()
    seen: list[int] = []
    records = await closed_loop(transport, spec_for, 4, requests=13, on_record=lambda r: seen.append(r.index))
    assert [r.index for r in records] == list(range(13))
    assert sorted(seen) == list(range(13))
    assert transport.peak == 4
    assert all(r.ok and len(r.token_times) == 3 for r in records)


async def test_closed_loop_by_duration_stops_sending() -> None:
    transport = FakeTransport()
    records = await closed_loop(transport, spec_for, 2, duration_s=0.05)
    assert records and all(r.ok for r in records)
    # Nothing was sent after the deadline (the last ones started before it).
    first = min(r.sent_at for r in records)
    assert max(r.sent_at for r in records) - first < 0.05 + 0.01


async def test_failed_requests_are_recorded_not_raised() -> None:
    records = await closed_loop(FakeTransport(fail_every=3), spec_for, 2, requests=9)
    assert sum(not r.ok for r in records) == 3
    assert all(r.error == "503 unavailable: busy" for r in records if not r.ok)


async def test_transport_bug_costs_one_request() -> None:
    class Broken(FakeTransport):
        async def send(self, spec: RequestSpec, record: RequestRecord) -> None:
            raise RuntimeError("bug")

    records = await closed_loop(Broken(), spec_for, 1, requests=2)
    assert [r.error for r in records] == ["client: RuntimeError: bug"] * 2


async def test_open_loop_keeps_the_schedule_and_does_not_wait() -> None:
    transport = FakeTransport(token_s=0.05)  # each request takes >= 150 ms
    records = await open_loop(transport, spec_for, "rate", 200.0, requests=10)
    assert len(records) == 10
    offsets = [r.scheduled_at - records[0].scheduled_at for r in records]
    assert offsets == pytest.approx([k / 200 for k in range(10)])
    assert all(r.sent_at >= r.scheduled_at for r in records)
    # The schedule spans 45 ms, each answer takes 150 ms: a closed loop would have one in
    # flight, the open loop sends them all without waiting.
    assert transport.peak == 10


def test_arrival_offsets() -> None:
    assert list(itertools.islice(arrival_offsets("rate", 4.0), 4)) == [0, 0.25, 0.5, 0.75]
    poisson = list(itertools.islice(arrival_offsets("poisson", 10.0, seed=3), 2001))
    gaps = [b - a for a, b in zip(poisson, poisson[1:], strict=False)]
    assert statistics.mean(gaps) == pytest.approx(0.1, rel=0.1)
    assert statistics.stdev(gaps) == pytest.approx(0.1, rel=0.15)  # exponential: sd = mean
    assert poisson == list(itertools.islice(arrival_offsets("poisson", 10.0, seed=3), 2001))


def test_sweep_levels_and_verdict() -> None:
    assert list(loadgen.sweep_levels(1, 16)) == [1, 2, 4, 8, 16]
    assert sweep_verdict([100.0], 0) is None
    assert sweep_verdict([100.0, 190.0], 0) is None
    assert "stopped rising" in sweep_verdict([100.0, 190.0, 195.0], 0)
    assert "errors" in sweep_verdict([100.0, 190.0], 2)


def test_load_spec_validation() -> None:
    assert LoadSpec("poisson", 2.5).describe() == "open loop, Poisson 2.5 req/s"
    for bad in (("burst", 1), ("rate", 0), ("concurrency", -1)):
        with pytest.raises(ValueError):
            LoadSpec(*bad)


def test_quick_preset_plan() -> None:
    plans = plan_scenarios(BenchConfig(preset="quick"))
    assert [p.name for p in plans] == ["constant_rate", "variable_rate"]
    assert plans[0].model == "mock/constant_rate?min_ms=1&max_ms=10"
    assert all(p.token_counts == [32, 64] and p.warmup == 5 and p.requests == 50 for p in plans)
    assert plans[0].load == LoadSpec("concurrency", 4)
    assert plans[1].mock is not None and plans[1].mock.max_ms == 10.0


def test_preset_variants() -> None:
    standard = plan_scenarios(BenchConfig(preset="standard", pattern="burst", max_tokens=16, requests=7,
                                          load=LoadSpec("rate", 3)))
    assert [(p.model, p.token_counts, p.requests, p.load.kind) for p in standard] == [
        ("mock/burst?min_ms=1&max_ms=30", [16], 7, "rate")]
    comprehensive = plan_scenarios(BenchConfig(preset="comprehensive"))
    assert len(comprehensive) == 4 and comprehensive[0].token_counts[-1] == 1024
    assert comprehensive[0].mock.min_ms == 0.5
    real = plan_scenarios(BenchConfig(preset="quick", model="gemma.gguf"))
    assert [(p.name, p.mock) for p in real] == [("gemma.gguf", None)]
    by_time = plan_scenarios(BenchConfig(preset="quick", duration_s=5))
    assert by_time[0].requests is None and by_time[0].duration_s == 5


def test_plan_defaults_and_errors() -> None:
    (plan,) = plan_scenarios(BenchConfig())
    assert (plan.model, plan.token_counts, plan.requests, plan.warmup) == ("mock/constant_rate", [64], 50, 2)
    (plan,) = plan_scenarios(BenchConfig(pattern="warmup"))
    assert plan.model == "mock/warmup"
    for config in (BenchConfig(pattern="constant", model="x"), BenchConfig(pattern="zigzag"),
                   BenchConfig(model="mock/zigzag"), BenchConfig(preset="huge")):
        with pytest.raises(ValueError):
            plan_scenarios(config)
