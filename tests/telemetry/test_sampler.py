"""TelemetrySampler: the worker thread, history, callbacks and failure handling."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from abi_tui.config import TelemetryConfig
from abi_tui.telemetry import HostReader, NvmlReader, TelemetrySampler, clamp_interval

from .fake_pynvml import two_gpus

Sample = dict[str, Any]


class Collector:
    """Receives samples from the worker thread; tests wait on conditions, not on sleeps."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self._cond = threading.Condition()

    def __call__(self, sample: Sample) -> None:
        with self._cond:
            self.samples.append(sample)
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.samples)

    def wait_for(
        self, predicate: Callable[[Sample], bool], since: int = 0, timeout: float = 10.0
    ) -> Sample:
        """The first sample from index `since` on that matches, waiting for it if needed."""
        with self._cond:
            found: list[Sample] = []

            def ready() -> bool:
                found[:] = [s for s in self.samples[since:] if predicate(s)]
                return bool(found)

            assert self._cond.wait_for(ready, timeout), "no matching sample in time"
            return found[0]


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[BaseException]]:
    errors: list[BaseException] = []

    def hook(args: threading.ExceptHookArgs) -> None:
        errors.append(args.exc_value)  # type: ignore[arg-type]

    monkeypatch.setattr(threading, "excepthook", hook)
    yield errors


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (1.0, 1.0),
        (0.01, 0.25),
        (0.25, 0.25),
        (10.0, 10.0),
        (60, 10.0),
        (-3, 0.25),
        (float("nan"), 1.0),
        ("2", 2.0),
    ],
)
def test_interval_is_clamped(given: Any, expected: float) -> None:
    assert clamp_interval(given) == expected
    sampler = TelemetrySampler(given, nvml_reader=NvmlReader(two_gpus()))
    assert sampler.interval_s == expected
    assert sampler.set_interval(given) == expected


def test_from_settings() -> None:
    sampler = TelemetrySampler.from_settings(
        TelemetryConfig(interval_s=0.1, history=5), nvml_reader=NvmlReader(two_gpus())
    )
    assert sampler.interval_s == 0.25
    assert sampler.samples.maxlen == 5


def test_history_is_capped_at_300() -> None:
    sampler = TelemetrySampler(nvml_reader=NvmlReader(two_gpus()))
    for _ in range(310):
        sampler.sample_once()
    history = sampler.history()
    assert len(history) == 300
    assert [s["seq"] for s in history] == list(range(11, 311))
    assert [s["seq"] for s in sampler.history(3)] == [308, 309, 310]
    assert sampler.snapshot()["history_size"] == 300


def test_sample_schema_is_plain_json() -> None:
    pool = {"resident": [{"model": "tiny", "bytes": {"weights": 1024, "kv_cache": 512}}], "hits": 3}
    sampler = TelemetrySampler(nvml_reader=NvmlReader(two_gpus()), pool_stats=lambda: pool)
    sampler.sample_once()
    sample = sampler.sample_once()
    decoded = json.loads(json.dumps(sample, allow_nan=False))
    assert decoded == sample
    assert set(sample) == {"seq", "ts", "mono", "interval_s", "gpu", "host", "pool", "cost_ms"}
    assert sample["gpu"]["state"] == "ok" and len(sample["gpu"]["gpus"]) == 2
    assert sample["gpu"]["gpus"][1]["fan_pct"] is None
    assert sample["pool"] == pool
    host = sample["host"]
    assert host["memory_total_bytes"] > 0 and host["process"]["rss_bytes"] > 0
    assert len(host["cpu_per_core"]) == host["cpu_count"]
    assert sample["ts"] > 1e9 and sample["cost_ms"] >= 0

    snapshot = sampler.snapshot()
    assert snapshot["latest"] is sample and snapshot["state"] == "ok" and snapshot["reason"] is None
    json.dumps(snapshot, allow_nan=False)


def test_failing_callbacks_become_data_not_crashes(thread_errors: list[BaseException]) -> None:
    def pool_stats() -> dict[str, Any]:
        raise RuntimeError("pool locked")

    def on_sample(sample: Sample) -> None:
        raise ValueError("subscriber gone")

    sampler = TelemetrySampler(
        0.25, nvml_reader=NvmlReader(two_gpus()), pool_stats=pool_stats, on_sample=on_sample
    )
    sample = sampler.sample_once()
    assert sample["pool"] == {"error": "RuntimeError('pool locked')"}
    assert sampler.stats()["errors"] == 2
    sampler.start()
    try:
        deadline = time.monotonic() + 10
        while sampler.stats()["samples"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sampler.running and sampler.stats()["samples"] >= 3
    finally:
        assert sampler.stop()
    assert thread_errors == []


def test_reader_bug_is_reported_as_error_state() -> None:
    class BrokenReader(NvmlReader):
        def read(self, max_age_s: float = 0.0) -> Any:
            raise ZeroDivisionError("oops")

    sampler = TelemetrySampler(nvml_reader=BrokenReader(two_gpus()))
    sample = sampler.sample_once()
    assert sample["gpu"]["state"] == "error" and "ZeroDivisionError" in sample["gpu"]["reason"]
    assert sample["host"]["error"] is None


def test_driver_error_mid_run_in_the_thread_then_recovery(
    thread_errors: list[BaseException],
) -> None:
    nvml = two_gpus()
    collector = Collector()
    reader = NvmlReader(nvml, retry_initial_s=0.0)  # retry on every sample: quick recovery
    sampler = TelemetrySampler(0.25, nvml_reader=reader, on_sample=collector)
    sampler.start()
    try:
        collector.wait_for(lambda s: s["gpu"]["state"] == "ok")
        nvml.fail(nvml.NVML_ERROR_GPU_IS_LOST)
        failed = collector.wait_for(lambda s: s["gpu"]["state"] == "error", collector.mark())
        assert failed["gpu"]["reason"] == "GPU is lost"
        assert failed["gpu"]["gpus"] == []
        assert failed["host"]["memory_total_bytes"] > 0  # the rest of the sample is unaffected
        assert sampler.running

        mark = collector.mark()
        nvml.recover()
        recovered = collector.wait_for(lambda s: s["gpu"]["state"] == "ok", mark)
        assert len(recovered["gpu"]["gpus"]) == 2
        assert sampler.snapshot()["state"] == "ok"
    finally:
        assert sampler.stop()
    assert thread_errors == []
    assert sampler.stats()["errors"] == 0  # driver errors are data, not sampler errors
    assert not nvml.initialised  # stop() shut NVML down after the thread ended


def test_stop_is_prompt_even_with_a_long_interval() -> None:
    collector = Collector()
    sampler = TelemetrySampler(10.0, nvml_reader=NvmlReader(two_gpus()), on_sample=collector)
    sampler.start()
    collector.wait_for(lambda s: True)
    started = time.monotonic()
    assert sampler.stop(timeout=5.0)
    # Well under the 10 s period: the wait is interrupted, not slept through.
    assert time.monotonic() - started < 5.0
    assert not sampler.running
    assert sampler.stats()["samples"] == 1


def test_set_interval_replans_a_waiting_sampler() -> None:
    collector = Collector()
    sampler = TelemetrySampler(10.0, nvml_reader=NvmlReader(two_gpus()), on_sample=collector)
    sampler.start()
    try:
        collector.wait_for(lambda s: s["seq"] == 1)
        sampler.set_interval(0.25)
        second = collector.wait_for(lambda s: s["seq"] == 2, timeout=5.0)  # not after 10 s
        assert second["interval_s"] == 0.25
    finally:
        sampler.stop()


def test_restart_after_stop() -> None:
    collector = Collector()
    sampler = TelemetrySampler(0.25, nvml_reader=NvmlReader(two_gpus()), on_sample=collector)
    sampler.start()
    collector.wait_for(lambda s: True)
    assert sampler.stop()
    mark = collector.mark()
    sampler.start()
    try:
        collector.wait_for(lambda s: s["gpu"]["state"] == "ok", mark)
    finally:
        assert sampler.stop()


def test_real_modules_sample_names_the_no_gpu_reason() -> None:
    """Default readers (real pynvml + psutil) on this machine."""
    sampler = TelemetrySampler(host_reader=HostReader())
    try:
        sample = sampler.sample_once()
    finally:
        sampler.stop()
    gpu = sample["gpu"]
    assert gpu["state"] in ("ok", "no_gpu", "no_driver", "error")
    if gpu["state"] != "ok":
        assert gpu["reason"], "a GPU-less state must say why"
    json.dumps(sample, allow_nan=False)
