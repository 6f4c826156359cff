"""Benchmark results: the in-memory form, its JSON document, earlier runs and run comparison.

The JSON document (schema `abi.bench/1`, fields in docs/BENCH.md) holds the config, the target,
the metric definitions, every scenario's summary and per-request samples, the encoding figures
and the telemetry series. `load_run` reads it back into a `BenchResult` whose records give the
same statistics again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abi_tui.bench.loadgen import LoadSpec
from abi_tui.bench.records import RequestRecord
from abi_tui.bench.stats import MockDelays

SCHEMA = "abi.bench/1"


@dataclass
class ScenarioResult:
    name: str
    model: str
    mock: MockDelays | None
    load: LoadSpec
    token_counts: list[int]
    warmup: int
    # Seconds on the run's clock (0 = the run's start): the measured phase's window.
    started_s: float
    ended_s: float
    records: list[RequestRecord]
    summary: dict[str, Any]
    energy: dict[str, Any] | None = None
    sweep_level: int | None = None

    def to_dict(self, t0: float) -> dict[str, Any]:
        return {
            "name": self.name, "model": self.model,
            "mock": self.mock.to_dict() if self.mock else None,
            "load": self.load.to_dict(), "token_counts": self.token_counts, "warmup": self.warmup,
            "sweep_level": self.sweep_level,
            "started_s": round(self.started_s, 6), "ended_s": round(self.ended_s, 6),
            "summary": self.summary, "energy": self.energy,
            "requests": [r.to_dict(t0) for r in self.records],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScenarioResult:
        mock = data.get("mock")
        load = data.get("load") or {}
        return cls(
            name=data["name"], model=data["model"],
            mock=MockDelays(**mock) if mock else None,
            load=LoadSpec(load.get("kind", "concurrency"), load.get("value", 1)),
            token_counts=list(data.get("token_counts") or []), warmup=int(data.get("warmup") or 0),
            started_s=float(data.get("started_s") or 0), ended_s=float(data.get("ended_s") or 0),
            records=[RequestRecord.from_dict(r) for r in data.get("requests") or []],
            summary=data.get("summary") or {}, energy=data.get("energy"),
            sweep_level=data.get("sweep_level"),
        )


@dataclass
class BenchResult:
    run_id: str
    created: str
    config: dict[str, Any]
    target: dict[str, Any]
    environment: dict[str, Any]
    definitions: dict[str, str]
    scenarios: list[ScenarioResult]
    encoding: dict[str, Any] | None
    telemetry: dict[str, Any]
    sweep: list[dict[str, Any]] | None
    duration_s: float
    abi_version: str
    # The monotonic reading the run's relative times count from (0 for a loaded run).
    t0: float = 0.0
    paths: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "run_id": self.run_id, "created": self.created,
            "abi_version": self.abi_version, "duration_s": round(self.duration_s, 3),
            "config": self.config, "target": self.target, "environment": self.environment,
            "definitions": self.definitions,
            "scenarios": [s.to_dict(self.t0) for s in self.scenarios],
            "sweep": self.sweep, "encoding": self.encoding, "telemetry": self.telemetry,
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not an abi benchmark result (schema {data.get('schema')!r}, expected {SCHEMA})")
        return cls(
            run_id=data["run_id"], created=data["created"], config=data.get("config") or {},
            target=data.get("target") or {}, environment=data.get("environment") or {},
            definitions=data.get("definitions") or {},
            scenarios=[ScenarioResult.from_dict(s) for s in data.get("scenarios") or []],
            encoding=data.get("encoding"), telemetry=data.get("telemetry") or {},
            sweep=data.get("sweep"), duration_s=float(data.get("duration_s") or 0),
            abi_version=data.get("abi_version", ""),
        )

    def totals(self) -> dict[str, Any]:
        """Headline figures over all scenarios, for run lists."""
        requests = sum(s.summary["requests"]["total"] for s in self.scenarios)
        errors = sum(s.summary["requests"]["errors"] for s in self.scenarios)
        first = self.scenarios[0].summary if self.scenarios else {}

        def p50(key: str) -> float | None:
            dist = first.get(key)
            return dist["p50"] if dist else None

        return {"requests": requests, "errors": errors, "ttft_p50_ms": p50("ttft_ms"),
                "itl_p50_ms": p50("itl_ms"), "output_tokens_per_s": first.get("output_tokens_per_s")}


def load_run(path: str | Path) -> BenchResult:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read benchmark result {path}: {exc}") from None
    result = BenchResult.from_dict(data)
    result.paths = {"json": str(path)}
    return result


@dataclass
class RunSummary:
    path: Path
    run_id: str
    created: str
    preset: str | None
    target: str
    models: list[str]
    scenarios: int
    requests: int
    errors: int
    ttft_p50_ms: float | None
    itl_p50_ms: float | None
    output_tokens_per_s: float | None


def list_runs(directory: str | Path) -> list[RunSummary]:
    """Saved runs in `directory` (normally Settings.bench_dir), newest first; unreadable files
    are skipped."""
    runs = []
    for path in Path(directory).glob("*.json"):
        try:
            result = load_run(path)
        except (ValueError, KeyError, TypeError):
            continue
        totals = result.totals()
        runs.append(RunSummary(
            path=path, run_id=result.run_id, created=result.created, preset=result.config.get("preset"),
            target=result.target.get("url", ""), models=sorted({s.model for s in result.scenarios}),
            scenarios=len(result.scenarios), **totals,
        ))
    runs.sort(key=lambda r: r.created, reverse=True)
    return runs


# metric path in a summary -> True when lower is better
COMPARED: dict[str, bool] = {
    "ttft_ms.p50": True, "ttft_ms.p99": True, "itl_ms.p50": True, "itl_ms.p99": True,
    "tpot_ms.p50": True, "e2e_ms.p50": True, "e2e_ms.p99": True,
    "output_tokens_per_s": False, "requests_per_s": False, "requests.errors": True,
    "goodput.fraction": False, "pipeline_overhead.itl_ms": True,
}


@dataclass
class MetricDelta:
    scenario: str
    metric: str
    a: float | None
    b: float | None
    delta: float | None
    ratio: float | None
    # "b" when run b is better on this metric, "a" when worse, None when equal or unknown.
    better: str | None


def _pick(summary: dict[str, Any], path: str) -> float | None:
    value: Any = summary
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def compare(a: BenchResult, b: BenchResult) -> list[MetricDelta]:
    """Metric by metric, scenario by scenario (matched by name): b against a."""
    deltas = []
    b_by_name = {s.name: s for s in b.scenarios}
    for scenario in a.scenarios:
        other = b_by_name.get(scenario.name)
        if other is None:
            continue
        for metric, lower_better in COMPARED.items():
            va, vb = _pick(scenario.summary, metric), _pick(other.summary, metric)
            delta = ratio = better = None
            if va is not None and vb is not None:
                delta = round(vb - va, 3)
                ratio = round(vb / va, 4) if va else None
                if vb != va:
                    better = "b" if (vb < va) == lower_better else "a"
            deltas.append(MetricDelta(scenario.name, metric, va, vb, delta, ratio, better))
    return deltas
