"""Telemetry during a benchmark, on the benchmark's clock.

The client samples its own machine with `abi_tui.telemetry` (host always, GPUs where NVML works)
in the sampler's worker thread; samples carry `mono` (time.monotonic), the clock every request
time is read from. When the target is an abi server, its /api/telemetry history is fetched too:
on the same machine (loopback) its `mono` is the same system-wide CLOCK_MONOTONIC; for a remote
server its wall-clock `ts` is mapped onto ours (good to the two clocks' NTP agreement).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from abi_tui.telemetry import HostReader, TelemetrySampler

POLL_S = 5.0
SERVER_HISTORY = 300


def compact(sample: dict[str, Any], t_s: float) -> dict[str, Any]:
    """The fields a benchmark keeps of one telemetry sample."""
    host = sample.get("host") or {}
    process = host.get("process") or {}
    gpu = sample.get("gpu") or {}
    return {
        "t_s": round(t_s, 3),
        "cpu_percent": host.get("cpu_percent"),
        "load_avg_1m": (host.get("load_avg") or [None])[0],
        "memory_used_bytes": host.get("memory_used_bytes"),
        "process_cpu_percent": process.get("cpu_percent"),
        "process_rss_bytes": process.get("rss_bytes"),
        "gpu_state": gpu.get("state"),
        "gpus": [{k: g.get(k) for k in ("index", "utilization_pct", "memory_used_bytes", "power_w",
                                        "energy_j", "temperature_c")} for g in gpu.get("gpus") or []],
    }


def _gpu_series(samples: list[dict[str, Any]], index: int, key: str) -> list[tuple[float, float]]:
    series = []
    for sample in samples:
        for gpu in sample["gpus"]:
            if gpu.get("index") == index and gpu.get(key) is not None:
                series.append((sample["t_s"], float(gpu[key])))
    return series


def _interpolate(series: list[tuple[float, float]], t: float) -> float | None:
    if not series or t < series[0][0] or t > series[-1][0]:
        return None
    for (t0, v0), (t1, v1) in zip(series, series[1:], strict=False):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return series[-1][1]


def _integrate(series: list[tuple[float, float]], a: float, b: float) -> float | None:
    points = [(t, v) for t, v in series if a <= t <= b]
    if len(points) < 2:
        return None
    return sum((t1 - t0) * (v0 + v1) / 2 for (t0, v0), (t1, v1) in zip(points, points[1:], strict=False))


def energy(samples: list[dict[str, Any]], a: float, b: float, tokens: int, source: str | None,
           reason: str | None) -> dict[str, Any]:
    """GPU energy over [a, b] (seconds on the run's clock), summed over GPUs, and tokens per joule."""
    out: dict[str, Any] = {"available": False, "source": source, "reason": reason, "energy_j": None,
                           "tokens_per_joule": None, "mean_power_w": None, "mean_utilization_pct": None,
                           "method": None}
    indices = sorted({g["index"] for s in samples for g in s["gpus"] if g.get("index") is not None})
    if not indices:
        return out
    total = 0.0
    methods = set()
    for index in indices:
        counter = _gpu_series(samples, index, "energy_j")
        start, end = _interpolate(counter, a), _interpolate(counter, b)
        if start is not None and end is not None and end >= start:
            total += end - start
            methods.add("energy counter")
            continue
        integral = _integrate(_gpu_series(samples, index, "power_w"), a, b)
        if integral is None:
            out["reason"] = (f"GPU {index} reports neither an energy counter nor power over the window"
                             if counter or _gpu_series(samples, index, "power_w")
                             else f"GPU {index}: NVML gives no energy or power on this device")
            return out
        total += integral
        methods.add("power integral")
    window = [s for s in samples if a <= s["t_s"] <= b]
    powers = [g["power_w"] for s in window for g in s["gpus"] if g.get("power_w") is not None]
    utils = [g["utilization_pct"] for s in window for g in s["gpus"] if g.get("utilization_pct") is not None]
    out.update(available=True, reason=None, energy_j=round(total, 3), method=" + ".join(sorted(methods)),
               tokens_per_joule=round(tokens / total, 4) if total > 0 else None,
               mean_power_w=round(sum(powers) / len(powers), 2) if powers else None,
               mean_utilization_pct=round(sum(utils) / len(utils), 1) if utils else None)
    return out


@dataclass
class TelemetryRecorder:
    t0: float
    server_url: str | None = None
    server_is_local: bool = True
    token: str | None = None
    interval_s: float = 0.25
    client: list[dict[str, Any]] = field(default_factory=list)
    server: dict[int, dict[str, Any]] = field(default_factory=dict)
    server_note: str | None = None
    _sampler: TelemetrySampler | None = None
    _poller: asyncio.Task | None = None
    _wall_minus_mono: float = 0.0

    @property
    def running(self) -> bool:
        return self._sampler is not None and self._sampler.running

    def start(self, session: aiohttp.ClientSession | None = None) -> None:
        self._wall_minus_mono = time.time() - time.monotonic()
        self._sampler = TelemetrySampler(self.interval_s, history=100_000,
                                         host_reader=HostReader(pid=os.getpid()))
        self._sampler.start()
        if self.server_url and session is not None:
            self._poller = asyncio.create_task(self._poll(session))
        elif self.server_url is None:
            self.server_note = "no abi server: only the client machine was sampled"

    async def _fetch(self, session: aiohttp.ClientSession, history: int) -> bool:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with session.get(f"{self.server_url}/api/telemetry", params={"history": str(history)},
                                   headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as response:
                if response.status != 200:
                    self.server_note = f"the server has no usable /api/telemetry (HTTP {response.status})"
                    return False
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.server_note = f"/api/telemetry failed: {exc.__class__.__name__}"
            return True  # try again later
        for sample in body.get("history") or []:
            if isinstance(sample, dict) and "seq" in sample:
                self.server[sample["seq"]] = sample
        self.server_note = None
        return True

    async def _poll(self, session: aiohttp.ClientSession) -> None:
        # Its history holds 300 samples; fetching a few every POLL_S keeps a long run whole.
        while await self._fetch(session, 20):
            await asyncio.sleep(POLL_S)

    def _server_t(self, sample: dict[str, Any]) -> float:
        if self.server_is_local and sample.get("mono") is not None:
            return sample["mono"] - self.t0
        return sample["ts"] - self._wall_minus_mono - self.t0

    async def stop(self, session: aiohttp.ClientSession | None = None) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            if session is not None and self.server_note is None:
                end = time.monotonic() - self.t0
                await self._fetch(session, SERVER_HISTORY)
                latest = max(self.server.values(), key=lambda s: s["seq"], default=None)
                if latest and (latest.get("gpu") or {}).get("gpus") and self._server_t(latest) < end:
                    # Energy needs a server sample after the run's end to interpolate to it.
                    await asyncio.sleep(min(float(latest.get("interval_s") or 1.0), 2.0))
                    await self._fetch(session, 10)
        if self._sampler is not None:
            self._sampler.sample_once()  # a sample at the very end closes the last window
            await asyncio.to_thread(self._sampler.stop)
            self.client = [compact(s, s["mono"] - self.t0) for s in self._sampler.history()]

    def server_samples(self, end_s: float) -> list[dict[str, Any]]:
        """The server's samples in the run's window [0, end_s], plus the nearest one either side
        (its sampler ticks at its own period, maybe less often than the run is long)."""
        samples = sorted((compact(s, self._server_t(s)) for s in self.server.values()), key=lambda s: s["t_s"])
        before = [s for s in samples if s["t_s"] < 0][-1:]
        inside = [s for s in samples if 0 <= s["t_s"] <= end_s]
        after = [s for s in samples if s["t_s"] > end_s][:1]
        return before + inside + after

    def gpu_source(self, end_s: float) -> tuple[list[dict[str, Any]], str | None, str | None]:
        """The samples to take energy from: the client's GPUs when they are the server's
        (loopback), else the server's own; and why there is none."""
        reasons = []
        if self.server_is_local and any(s["gpus"] for s in self.client):
            return self.client, "client NVML (same machine as the server)", None
        server = self.server_samples(end_s)
        if any(s["gpus"] for s in server):
            return server, "server /api/telemetry", None
        states = {s["gpu_state"] for s in self.client} - {None, "ok"}
        reason_text = self._sampler.nvml_reader.reason if self._sampler else None
        if self.server_is_local:
            reasons.append(f"no NVIDIA GPU readable here ({', '.join(sorted(states)) or 'no GPU'}"
                           f"{': ' + reason_text if reason_text else ''})")
        else:
            reasons.append("the server is remote, so this machine's GPUs are not its GPUs")
        if self.server_note:
            reasons.append(self.server_note)
        elif self.server_url and not server:
            reasons.append("the server's /api/telemetry had no samples in the run's window")
        elif self.server_url:
            reasons.append("the server's /api/telemetry lists no GPU")
        return [], None, "; ".join(reasons)
