"""Telemetry services: NVML GPUs, host (psutil), model-pool statistics and a sample history.

No Textual here: the sampler runs in a plain thread and produces JSON-ready dicts that the server
serves on /api/telemetry and /api/events and the dashboard renders.
"""

from abi_tui.telemetry.history import TelemetryHistory
from abi_tui.telemetry.host import HostReader
from abi_tui.telemetry.nvml import NvmlReader
from abi_tui.telemetry.sampler import (
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    TelemetrySampler,
    clamp_interval,
)
from abi_tui.telemetry.schema import (
    NA,
    GpuProcess,
    GpuRecord,
    GpuStatus,
    HostRecord,
    ProcessRecord,
    na,
)

__all__ = [
    "MAX_INTERVAL_S",
    "MIN_INTERVAL_S",
    "NA",
    "GpuProcess",
    "GpuRecord",
    "GpuStatus",
    "HostReader",
    "HostRecord",
    "NvmlReader",
    "ProcessRecord",
    "TelemetryHistory",
    "TelemetrySampler",
    "clamp_interval",
    "na",
]
