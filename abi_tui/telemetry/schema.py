"""Telemetry records shared by the sampler, the API and the dashboard.

Units are in the field names (bytes, percent 0-100, degrees C, watts, MHz, joules). A value the
hardware or driver cannot report is None in Python and null in JSON; the UI renders it with
`na()` as "N/A" (nvitop's convention), so "unsupported" never looks like zero.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

NA = "N/A"

GpuState = Literal["ok", "no_gpu", "no_driver", "error"]
GPU_STATES: tuple[str, ...] = ("ok", "no_gpu", "no_driver", "error")

_R = TypeVar("_R")


def na(value: Any, fmt: str = "{}") -> str:
    """Format a reading for display, "N/A" when it is unavailable."""
    return NA if value is None else fmt.format(value)


def _from_dict(cls: type[_R], data: Mapping[str, Any]) -> _R:
    # Ignore keys this version does not know, so an older dashboard can read a newer server.
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class GpuProcess:
    pid: int
    # "C" compute, "G" graphics, "C+G" both (nvidia-smi's notation).
    kind: str
    used_memory_bytes: int | None = None
    name: str | None = None
    # True for the abi server's own process; `models` then lists what it has loaded.
    is_self: bool = False
    models: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GpuProcess:
        return _from_dict(cls, data)


@dataclass
class GpuRecord:
    index: int
    name: str | None = None
    uuid: str | None = None
    utilization_pct: int | None = None
    memory_utilization_pct: int | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    memory_free_bytes: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    fan_pct: int | None = None
    clock_graphics_mhz: int | None = None
    clock_sm_mhz: int | None = None
    clock_memory_mhz: int | None = None
    clock_graphics_max_mhz: int | None = None
    clock_memory_max_mhz: int | None = None
    # Energy since the driver loaded; differences over a run give joules (tokens per joule).
    energy_j: float | None = None
    processes: list[GpuProcess] = field(default_factory=list)
    # Set when this device failed mid-read (e.g. "GPU is lost"); the other fields are then partial.
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GpuRecord:
        record = _from_dict(cls, data)
        record.processes = [GpuProcess.from_dict(p) for p in data.get("processes") or []]
        return record


@dataclass
class GpuStatus:
    """What NVML said this sample: a state, why, and the GPUs it could read."""

    state: GpuState
    reason: str | None = None
    # One sentence a user can act on, for the panel ("Install the NVIDIA driver ...").
    hint: str | None = None
    driver_version: str | None = None
    gpus: list[GpuRecord] = field(default_factory=list)
    # Seconds until the reader tries NVML again (error / no_driver states), else None.
    retry_in_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GpuStatus:
        status = _from_dict(cls, data)
        status.gpus = [GpuRecord.from_dict(g) for g in data.get("gpus") or []]
        return status


@dataclass
class ProcessRecord:
    """The server process as psutil sees it."""

    pid: int
    name: str | None = None
    rss_bytes: int | None = None
    # Percent of ONE core (can exceed 100 with several busy threads), like top.
    cpu_percent: float | None = None
    num_threads: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return _from_dict(cls, data)


@dataclass
class HostRecord:
    cpu_count: int | None = None
    # Whole-machine busy percent (mean of the cores) and per core; None on the first sample,
    # where psutil has no earlier reading to compare with.
    cpu_percent: float | None = None
    cpu_per_core: list[float] | None = None
    load_avg: list[float] | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_available_bytes: int | None = None
    memory_percent: float | None = None
    swap_total_bytes: int | None = None
    swap_used_bytes: int | None = None
    process: ProcessRecord | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HostRecord:
        record = _from_dict(cls, data)
        process = data.get("process")
        record.process = ProcessRecord.from_dict(process) if process else None
        return record
