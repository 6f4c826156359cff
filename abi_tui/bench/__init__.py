"""The streaming benchmark: load generator, statistics, reports (the mock backend's delay
patterns are `backends/mock_patterns.py`).

Programmatic API (the dashboard's Bench pane and scripts use it; no Textual here):

    from abi_tui.bench import BenchConfig, LoadSpec, run_benchmark, save_result
    result = await run_benchmark(BenchConfig(preset="quick"), on_progress=print)
    save_result(result, settings.bench_dir); result.to_json()
    list_runs(settings.bench_dir); load_run(path); compare(run_a, run_b)

Names are imported lazily: the dashboard imports the light modules (presets, figures) when the
Bench pane mounts, without the runner and its HTTP stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BenchConfig": "runner", "LiveSample": "runner", "run_benchmark": "runner", "plan_scenarios": "runner",
    "BenchError": "embedded", "LoadSpec": "loadgen",
    "BenchResult": "results", "ScenarioResult": "results", "RunSummary": "results", "MetricDelta": "results",
    "list_runs": "results", "load_run": "results", "compare": "results",
    "save_result": "report", "render": "report",
    "DEFINITIONS": "stats", "parse_slo": "stats", "PRESETS": "presets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'abi_tui.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(f"abi_tui.bench.{module}"), name)
