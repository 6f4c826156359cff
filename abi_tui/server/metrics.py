"""Prometheus metrics, one registry per server so tests can run several."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ITL_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class _LiveCollector:
    """Gauges read at scrape time from the engine, pool and telemetry."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def collect(self):
        state = self.read()
        active = GaugeMetricFamily("abi_active_streams", "Streams generating now")
        active.add_metric([], state.get("active_streams", 0))
        queued = GaugeMetricFamily("abi_queued_requests", "Requests waiting for a slot")
        queued.add_metric([], state.get("queued", 0))
        loaded = GaugeMetricFamily("abi_model_loaded", "1 for each resident model", labels=["model"])
        pool = GaugeMetricFamily("abi_pool_bytes", "Model pool bytes by model and kind", labels=["model", "kind"])
        for model in state.get("pool_models", []):
            loaded.add_metric([model["model"]], 1)
            for kind, size in model["bytes"].items():
                pool.add_metric([model["model"], kind], size)
        gpu_used = GaugeMetricFamily("abi_gpu_memory_used_bytes", "GPU memory used", labels=["gpu"])
        gpu_util = GaugeMetricFamily("abi_gpu_utilization", "GPU utilization, percent", labels=["gpu"])
        for gpu in state.get("gpus", []):
            if gpu.get("memory_used_bytes") is not None:
                gpu_used.add_metric([str(gpu["index"])], gpu["memory_used_bytes"])
            if gpu.get("utilization_pct") is not None:
                gpu_util.add_metric([str(gpu["index"])], gpu["utilization_pct"])
        yield from (active, queued, loaded, pool, gpu_used, gpu_util)
        yield from state.get("extra", [])


class ServerMetrics:
    def __init__(self, read_state: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("abi_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.prompt_tokens = Counter("abi_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generated_tokens = Counter("abi_generated_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("abi_ttft_seconds", "Time to first token", buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("abi_inter_token_seconds", "Mean gap between tokens of a stream",
                             buckets=ITL_BUCKETS, registry=r)
        self.load_seconds = Histogram("abi_model_load_seconds", "Model load time", buckets=LATENCY_BUCKETS, registry=r)
        r.register(_LiveCollector(read_state))

    def observe_stream(self, prompt_tokens: int, completion_tokens: int, ttft_ms: float | None,
                       tokens_per_s: float) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.generated_tokens.inc(completion_tokens)
        if ttft_ms is not None:
            self.ttft.observe(ttft_ms / 1000)
        if tokens_per_s > 0:
            self.itl.observe(1 / tokens_per_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
