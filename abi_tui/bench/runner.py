"""`run_benchmark`: the whole streaming benchmark as one coroutine, for the CLI and the dashboard.

Steps: start the embedded server (or probe --url), plan the scenarios (a preset's patterns, or
one model), start telemetry, then per scenario a warm-up phase that is thrown away and the
measured phase (or one per sweep level); finally the in-process encoding figures, and the
server is stopped. Progress goes to `on_progress` as `LiveSample`s on the event loop.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from abi_tui import __version__
from abi_tui.bench import loadgen
from abi_tui.bench.embedded import BenchError, ServerProcess
from abi_tui.bench.encoding import measure_encoding, sample_tokens
from abi_tui.bench.loadgen import LoadSpec, run_load
from abi_tui.bench.presets import get_preset, mock_model_id, pattern_name
from abi_tui.bench.records import RequestRecord, RequestSpec, now
from abi_tui.bench.results import BenchResult, ScenarioResult
from abi_tui.bench.sampling import TelemetryRecorder, energy
from abi_tui.bench.stats import DEFINITIONS, MockDelays, mock_delays, request_metrics, summarize
from abi_tui.bench.transports import ROUTES, SseTransport, Transport, WsTransport, make_session

DEFAULT_PROMPT = ("Write a detailed story about a lighthouse keeper who measures the time between "
                  "the flashes of distant ships")
DEFAULT_REQUESTS = 50
DEFAULT_MAX_TOKENS = 64
DEFAULT_WARMUP = 2
WARMUP_MAX_CONCURRENCY = 4
PERSONA_IDS = ("auto", "abi", "abbey", "aviva")


@dataclass
class BenchConfig:
    """Everything a run needs; None means the preset's value or the documented default."""

    url: str | None = None
    model: str | None = None
    preset: str | None = None
    pattern: str | None = None
    load: LoadSpec | None = None
    requests: int | None = None
    duration_s: float | None = None
    max_tokens: int | None = None
    transport: str = "sse"
    # SSE route: chat, completions or abi; None = abi on an abi server, chat elsewhere.
    route: str | None = None
    slo: dict[str, float] = field(default_factory=dict)
    token: str | None = None
    warmup: int | None = None
    prompt: str = DEFAULT_PROMPT
    # Merged into every request body (temperature, logit_bias, ...).
    extra_body: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 300.0
    telemetry_interval_s: float = 0.25
    # Extra `abi dash --serve` flags for the embedded server (e.g. ["--max-streams", "1"]).
    server_args: list[str] = field(default_factory=list)
    seed: int = 0
    measure_encoding: bool = True

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["load"] = self.load.to_dict() if self.load else None
        data["token"] = "***" if self.token else None  # never write a secret to disk
        return data


@dataclass
class LiveSample:
    """One progress event: `event` is "phase" when a phase starts, "request" when one ends.

    Carries what the Bench pane charts: ITL points over time, TTFT values, the aggregate rate.
    """

    event: str
    t_s: float
    scenario: str
    phase: str  # "warmup" or "measure"
    level: int | None = None
    done: int = 0
    planned: int | None = None
    errors: int = 0
    error: str | None = None
    ttft_ms: float | None = None
    e2e_ms: float | None = None
    tokens: int = 0
    # (seconds since the run's start at the later token's arrival, gap in ms)
    itl: list[tuple[float, float]] = field(default_factory=list)
    tokens_per_s: float | None = None


ProgressCallback = Callable[[LiveSample], None]


@dataclass
class ScenarioPlan:
    name: str
    model: str
    mock: MockDelays | None
    token_counts: list[int]
    warmup: int
    requests: int | None
    duration_s: float | None
    load: LoadSpec


@dataclass
class Target:
    url: str
    kind: str  # "abi" or "openai-compatible"
    embedded: ServerProcess | None
    health: dict[str, Any]

    @property
    def is_local(self) -> bool:
        host = urlsplit(self.url).hostname or ""
        return host in ("localhost", "::1") or host.startswith("127.")


def _is_local_model(model: str) -> bool:
    return model.endswith(".gguf") or os.path.exists(model)


def plan_scenarios(config: BenchConfig, default_model: str | None = None) -> list[ScenarioPlan]:
    """The scenarios a config asks for; ValueError with a user-facing reason when it makes no sense."""
    if config.pattern and config.model:
        raise ValueError("--pattern picks a mock model; give either --pattern or --model")
    pattern = pattern_name(config.pattern) if config.pattern else None
    if config.requests is not None and config.requests <= 0:
        raise ValueError("--requests must be positive")
    if config.duration_s is not None and not config.duration_s > 0:
        raise ValueError("--duration must be positive")
    if config.preset:
        preset = get_preset(config.preset)
        if config.model:
            models = [config.model]
        elif default_model and not pattern:
            models = [default_model]
        else:
            models = [preset.mock_model(p) for p in ([pattern] if pattern else preset.patterns)]
        token_counts = [config.max_tokens] if config.max_tokens else list(preset.token_counts)
        warmup = preset.warmup if config.warmup is None else config.warmup
        requests = config.requests if config.requests is not None else (None if config.duration_s else preset.runs)
        load = config.load or LoadSpec("concurrency", preset.concurrency)
    else:
        model = config.model or default_model or mock_model_id(pattern or "constant_rate")
        if pattern:
            model = mock_model_id(pattern)
        models = [model]
        token_counts = [config.max_tokens or DEFAULT_MAX_TOKENS]
        warmup = DEFAULT_WARMUP if config.warmup is None else config.warmup
        requests = config.requests if config.requests is not None else (None if config.duration_s else DEFAULT_REQUESTS)
        load = config.load or LoadSpec("concurrency", 1)
    plans = []
    for model in models:
        mock = mock_delays(model)
        name = mock.pattern if mock and len(models) > 1 else model
        plans.append(ScenarioPlan(name, model, mock, token_counts, warmup, requests, config.duration_s, load))
    return plans


async def _probe(session: aiohttp.ClientSession, url: str, token: str | None) -> tuple[str, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with session.get(f"{url}/health", headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as response:
            body = await response.json(content_type=None) if response.status < 500 else {}
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise BenchError(f"cannot reach {url}: {exc.__class__.__name__}: {exc}") from None
    except ValueError:
        body = {}
    # abi's /health names its active streams and version; other servers do not.
    if isinstance(body, dict) and "active_streams" in body and "version" in body:
        return "abi", body
    return "openai-compatible", body if isinstance(body, dict) else {}


async def _first_model(session: aiohttp.ClientSession, url: str, token: str | None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with session.get(f"{url}/v1/models", headers=headers) as response:
            data = (await response.json(content_type=None)).get("data") or []
    except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
        data = []
    if not data:
        raise BenchError(f"{url} lists no model on /v1/models; name one with --model")
    return data[0]["id"]


def _environment() -> dict[str, Any]:
    return {"hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "load_avg_start": [round(x, 2) for x in os.getloadavg()],
            "clock": "time.monotonic (CLOCK_MONOTONIC)"}


def _request_seed(plan: ScenarioPlan, k: int, warmup: bool) -> int | None:
    # Each request of a mock scenario gets its own seed, so variable_rate draws fresh delays and
    # the statistics can replay exactly the delays the mock slept.
    if plan.mock is None:
        return None
    return plan.mock.seed + (1_000_000 if warmup else 0) + k


class _Run:
    def __init__(self, config: BenchConfig, on_progress: ProgressCallback | None) -> None:
        self.config = config
        self.on_progress = on_progress
        self.t0 = now()
        self.environment = _environment()  # load average at the start: how busy the machine was

    def emit(self, sample: LiveSample) -> None:
        if self.on_progress is not None:
            try:
                self.on_progress(sample)
            except Exception:  # a broken progress view must not end the benchmark
                self.on_progress = None

    def spec_for(self, plan: ScenarioPlan, warmup: bool) -> Callable[[int], RequestSpec]:
        counts = plan.token_counts

        def make(k: int) -> RequestSpec:
            return RequestSpec(index=k, model=plan.model, prompt=self.config.prompt,
                               max_tokens=counts[k % len(counts)], seed=_request_seed(plan, k, warmup),
                               extra=dict(self.config.extra_body))
        return make

    def recorder(self, plan: ScenarioPlan, phase: str, planned: int | None,
                 level: int | None) -> Callable[[RequestRecord], None]:
        state = {"done": 0, "errors": 0, "tokens": 0, "start": now()}
        self.emit(LiveSample("phase", now() - self.t0, plan.name, phase, level, planned=planned))

        def on_record(record: RequestRecord) -> None:
            state["done"] += 1
            metrics = request_metrics(record)
            if not record.ok:
                state["errors"] += 1
            else:
                state["tokens"] += metrics.tokens
            elapsed = now() - state["start"]
            times = record.token_times
            itl = [(round(b - self.t0, 4), round((b - a) * 1000, 3)) for a, b in zip(times, times[1:], strict=False)]
            self.emit(LiveSample(
                "request", now() - self.t0, plan.name, phase, level, done=state["done"], planned=planned,
                errors=state["errors"], error=record.error, ttft_ms=metrics.ttft_ms if record.ok else None,
                e2e_ms=metrics.e2e_ms if record.ok else None, tokens=metrics.tokens if record.ok else 0,
                itl=itl if record.ok else [],
                tokens_per_s=state["tokens"] / elapsed if elapsed > 0 else None))
        return on_record

    async def warmup(self, transport: Transport, plan: ScenarioPlan) -> None:
        if plan.warmup <= 0:
            return
        concurrency = int(plan.load.value) if plan.load.kind in ("concurrency", "sweep") else WARMUP_MAX_CONCURRENCY
        concurrency = max(1, min(concurrency, plan.warmup))
        records = await loadgen.closed_loop(transport, self.spec_for(plan, warmup=True), concurrency,
                                            requests=plan.warmup,
                                            on_record=self.recorder(plan, "warmup", plan.warmup, None))
        if all(not r.ok for r in records):
            raise BenchError(f"every warm-up request to {plan.model} failed: {records[0].error}")

    async def measure(self, transport: Transport, plan: ScenarioPlan, load: LoadSpec,
                      requests: int | None, level: int | None) -> tuple[float, float, list[RequestRecord]]:
        started = now()
        records = await run_load(transport, self.spec_for(plan, warmup=False), load, requests=requests,
                                 duration_s=plan.duration_s, seed=self.config.seed,
                                 on_record=self.recorder(plan, "measure", requests, level))
        return started - self.t0, now() - self.t0, records


def _sweep_requests(plan: ScenarioPlan, level: int) -> int | None:
    # A level needs a few waves at its concurrency to mean anything.
    if plan.requests is None:
        return None
    return max(plan.requests, 2 * level)


async def run_benchmark(config: BenchConfig, on_progress: ProgressCallback | None = None) -> BenchResult:
    """Run the benchmark `config` describes; BenchError for a run that cannot go ahead."""
    if config.transport not in ("sse", "ws"):
        raise ValueError("--transport must be sse or ws")
    if config.route is not None and config.route not in ROUTES:
        raise ValueError(f"--route must be one of {', '.join(ROUTES)}")
    run = _Run(config, on_progress)
    created = dt.datetime.now(dt.UTC).astimezone()
    embedded: ServerProcess | None = None
    streams = make_session(config.timeout_s)
    session = streams.session
    transport: Transport | None = None
    recorder: TelemetryRecorder | None = None
    try:
        if config.url:
            url = config.url.rstrip("/")
            kind, health = await _probe(session, url, config.token)
        else:
            args = list(config.server_args)
            if config.model and _is_local_model(config.model) and "--model" not in args:
                args += ["--model", config.model]  # loaded before the first request, not during it
            embedded = ServerProcess(args, token=config.token)
            url = await embedded.start(timeout_s=max(120.0, config.timeout_s))
            kind, health = "abi", embedded.health
        target = Target(url, kind, embedded, health)

        default_model = None
        if kind != "abi" and not config.model:
            if config.pattern:
                raise BenchError("mock patterns need an abi server; name a --model for this server")
            default_model = await _first_model(session, url, config.token)
        plans = plan_scenarios(config, default_model)
        if kind != "abi" and any(p.mock for p in plans):
            raise BenchError(f"{url} is not an abi server: it has no mock/ models; name one of its models")
        route = config.route or ("abi" if kind == "abi" else "chat")
        if config.transport == "ws":
            if kind != "abi":
                raise BenchError("the WebSocket transport is abi's protocol; use --transport sse for this server")
            transport = WsTransport(url, session, config.token, config.timeout_s)
        else:
            transport = SseTransport(url, route, streams, config.token, include_usage=kind == "abi")

        recorder = TelemetryRecorder(run.t0, server_url=url if kind == "abi" else None,
                                     server_is_local=target.is_local, token=config.token,
                                     interval_s=config.telemetry_interval_s)
        recorder.start(session)

        scenarios: list[ScenarioResult] = []
        sweeps: list[dict[str, Any]] = []
        for plan in plans:
            await run.warmup(transport, plan)
            if plan.load.kind != "sweep":
                started, ended, records = await run.measure(transport, plan, plan.load, plan.requests, None)
                scenarios.append(ScenarioResult(
                    plan.name, plan.model, plan.mock, plan.load, plan.token_counts, plan.warmup,
                    started, ended, records, summarize(records, mock=plan.mock, slo=config.slo)))
                continue
            levels: list[dict[str, Any]] = []
            throughputs: list[float] = []
            verdict = None
            for level in loadgen.sweep_levels(int(plan.load.value)):
                load = LoadSpec("concurrency", level)
                started, ended, records = await run.measure(transport, plan, load,
                                                            _sweep_requests(plan, level), level)
                summary = summarize(records, mock=plan.mock, slo=config.slo)
                scenarios.append(ScenarioResult(
                    f"{plan.name} c={level}", plan.model, plan.mock, load, plan.token_counts, plan.warmup,
                    started, ended, records, summary, sweep_level=level))
                throughputs.append(summary["output_tokens_per_s"] or 0.0)
                ttft = summary["ttft_ms"]
                levels.append({"concurrency": level, "output_tokens_per_s": summary["output_tokens_per_s"],
                               "requests_per_s": summary["requests_per_s"],
                               "ttft_p50_ms": ttft["p50"] if ttft else None,
                               "errors": summary["requests"]["errors"]})
                verdict = loadgen.sweep_verdict(throughputs, summary["requests"]["errors"])
                if verdict:
                    break
            best = max(levels, key=lambda lv: lv["output_tokens_per_s"] or 0.0)
            sweeps.append({"scenario": plan.name, "levels": levels,
                           "stopped": verdict or f"reached concurrency {levels[-1]['concurrency']}, the cap",
                           "best_concurrency": best["concurrency"]})
        duration = now() - run.t0
        await recorder.stop(session)

        encoding = None
        if config.measure_encoding:
            # The prompt's words are what the mock streams back: the benchmark's own tokens.
            words = config.prompt.split()
            encoding = await measure_encoding(sample_tokens(2000, words) if words else None)

        samples, source, reason = recorder.gpu_source(duration)
        for scenario in scenarios:
            scenario.energy = energy(samples, scenario.started_s, scenario.ended_s,
                                     scenario.summary["output_tokens"], source, reason)
        total_tokens = sum(s.summary["output_tokens"] for s in scenarios)
        first = min((s.started_s for s in scenarios), default=0.0)
        last = max((s.ended_s for s in scenarios), default=0.0)
        environment = run.environment
        environment["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        cpu = [s["cpu_percent"] for s in recorder.client if s["cpu_percent"] is not None]
        environment["host_cpu_percent_mean"] = round(sum(cpu) / len(cpu), 1) if cpu else None
        telemetry = {
            "interval_s": config.telemetry_interval_s,
            "clock": "t_s = seconds since the run's start on time.monotonic, the requests' clock",
            "client": recorder.client,
            "server": recorder.server_samples(duration) if recorder.server_url else None,
            "server_note": recorder.server_note,
            "gpu": energy(samples, first, last, total_tokens, source, reason),
        }
        health = {k: target.health.get(k) for k in ("model", "version", "state", "parallel")
                  if k in target.health}
        result = BenchResult(
            run_id=f"{created:%Y%m%d-%H%M%S}-{config.preset or 'custom'}-{secrets.token_hex(2)}",
            created=created.isoformat(timespec="seconds"), config=config.to_dict(),
            target={"url": url, "embedded": embedded is not None, "server": kind, "health": health,
                    "transport": config.transport,
                    "route": route if config.transport == "sse" else "ws",
                    "endpoint": ROUTES[route] if config.transport == "sse" else "/api/stream/ws"},
            environment=environment, definitions=dict(DEFINITIONS), scenarios=scenarios,
            encoding=encoding, telemetry=telemetry, sweep=sweeps or None, duration_s=duration,
            abi_version=__version__, t0=run.t0)
        return result
    finally:
        if recorder is not None and recorder.running:
            await recorder.stop(None)
        if transport is not None:
            await transport.close()
        await streams.close()
        if embedded is not None:
            await embedded.stop()

