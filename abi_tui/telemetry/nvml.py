"""GPU readings through NVML (`nvidia-ml-py`, module `pynvml`).

`NvmlReader.read()` never raises for anything the driver or hardware does. Each field is read on
its own, so a field the device does not support becomes None ("N/A") instead of hiding the rest
of the card; a field that reported "not supported" once is not asked again until NVML is
re-initialised. Driver failures (GPU lost, driver unloaded, unknown error) turn into the "error"
state with the driver's own reason text, and the reader re-initialises NVML with exponential
backoff until it works again. The pattern follows nvitop: an N/A sentinel, cached static
device data, and never crashing on a driver error.

The module is passed in so tests can inject a fake (`tests/telemetry/fake_pynvml.py`); everything
else uses the real `pynvml`. The reader is not tied to a thread, but calls are serialised by a lock
so that `close()` (nvmlShutdown) can never run while another thread is inside an NVML call.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from abi_tui.backoff import Backoff
from abi_tui.telemetry.schema import GpuProcess, GpuRecord, GpuState, GpuStatus

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# NVML's "value not available" markers for unsigned fields.
_UINT_MAX = 0xFFFFFFFF
_ULONGLONG_MAX = 0xFFFFFFFFFFFFFFFF

# Error codes that mean "this device or driver cannot give this field": N/A for good.
_UNSUPPORTED_ERRORS = (
    "NOT_SUPPORTED",
    "NO_PERMISSION",
    "FUNCTION_NOT_FOUND",
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "DEPRECATED",
    "ARGUMENT_VERSION_MISMATCH",
    "FREQ_NOT_SUPPORTED",
    "VGPU_ECC_NOT_SUPPORTED",
)
# Error codes that mean "no value right now": N/A for this sample only.
_TRANSIENT_ERRORS = ("NO_DATA", "NOT_READY", "INSUFFICIENT_SIZE", "IN_USE")
# Anything else (GPU_IS_LOST, UNKNOWN, DRIVER_NOT_LOADED, UNINITIALIZED, RESET_REQUIRED, ...)
# means the device or driver is in trouble: the sample goes to the "error" state.

HINTS = {
    "library": "The NVIDIA driver is not installed (libnvidia-ml could not be loaded); "
    "GPU telemetry is off, everything else works.",
    "no_driver": "NVML could not start; check the NVIDIA driver (does `nvidia-smi` work?). "
    "GPU telemetry is off, everything else works.",
    "no_module": "Install nvidia-ml-py (`pip install nvidia-ml-py`) for GPU telemetry.",
    "no_gpu": "The NVIDIA driver is loaded but lists no GPU (a container started without GPU "
    "access?).",
    "error": "NVML failed while running; retrying with backoff. A lost GPU may need a reset "
    "or a reboot.",
}


class _DeviceFailure(Exception):
    """A driver-level error while reading one device: the sample becomes an error sample."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Device:
    index: int
    handle: Any = None
    # Static data, read once per NVML session.
    static_read: bool = False
    name: str | None = None
    uuid: str | None = None
    clock_graphics_max_mhz: int | None = None
    clock_memory_max_mhz: int | None = None
    # Fields the device said it does not support: never queried again in this session.
    unsupported: set[str] = field(default_factory=set)


def _psutil_process_name(pid: int) -> str | None:
    try:
        import psutil

        return psutil.Process(pid).name()
    except Exception:  # gone, hidden in another PID namespace, or no permission
        return None


class NvmlReader:
    """Reads every NVIDIA GPU through NVML; see the module docstring for the guarantees."""

    def __init__(
        self,
        nvml: Any = None,
        *,
        own_pid: int | None = None,
        model_names: Callable[[], Sequence[str]] | None = None,
        process_name: Callable[[int], str | None] | None = None,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
        no_driver_retry_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._import_error: str | None = None
        if nvml is None:
            try:
                import pynvml

                nvml = pynvml
            except ImportError as exc:
                self._import_error = f"nvidia-ml-py is not installed ({exc})"
        self._nvml = nvml
        self.own_pid = os.getpid() if own_pid is None else own_pid
        self._model_names = model_names
        self._process_name = process_name or _psutil_process_name
        self._names: dict[int, str | None] = {}
        self._no_driver_retry_s = no_driver_retry_s
        self._clock = clock
        self._lock = threading.Lock()

        self._initialised = False
        self._ever_initialised = False
        self._devices: list[_Device] = []
        self._driver_version: str | None = None
        self._state: GpuState = "no_driver"
        self._reason: str | None = "NVML not read yet"
        self._hint: str | None = None
        self._retry_at: float | None = None
        self._backoff = Backoff(initial=retry_initial_s, maximum=retry_max_s, jitter=0.0)
        self._last: tuple[float, GpuStatus] | None = None
        self._model_cache: list[str] | None = None

        self._unsupported_codes = self._codes(_UNSUPPORTED_ERRORS)
        self._transient_codes = self._codes(_TRANSIENT_ERRORS)
        nvml_error = getattr(nvml, "NVMLError", None)
        self._nvml_error: type[BaseException] | None = (
            nvml_error if isinstance(nvml_error, type) else None
        )
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)
        # pynvml raises this (not an NVMLError) when an unversioned call is missing in the driver.
        self._unsupported_types: tuple[type[BaseException], ...] = (
            AttributeError,
            NotImplementedError,
            *([mismatch] if isinstance(mismatch, type) else []),
        )

    # -- public ---------------------------------------------------------------------------

    @property
    def state(self) -> GpuState:
        return self._state

    @property
    def reason(self) -> str | None:
        return self._reason

    def read(self, max_age_s: float = 0.0) -> GpuStatus:
        """Read all GPUs now, or return the last reading if it is younger than `max_age_s`."""
        with self._lock:
            now = self._clock()
            if self._last is not None and max_age_s > 0 and now - self._last[0] < max_age_s:
                return self._last[1]
            status = self._read(now)
            self._last = (now, status)
            return status

    def close(self) -> None:
        """Shut NVML down; a later read() initialises it again."""
        with self._lock:
            self._shutdown()
            self._retry_at = None
            self._last = None

    # -- state machine --------------------------------------------------------------------

    def _read(self, now: float) -> GpuStatus:
        if self._nvml is None:
            self._set("no_driver", self._import_error or "pynvml unavailable", HINTS["no_module"])
            return self._status(now)
        if self._retry_at is not None and now >= self._retry_at:
            # Time for another attempt: a full re-init also refreshes stale device handles.
            self._retry_at = None
            self._shutdown()
        if not self._initialised:
            if self._retry_at is not None or not self._init(now):
                return self._status(now)

        nvml = self._nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as exc:
            if not self._is_nvml_error(exc):
                raise
            self._fail(now, self._reason_of(exc), driver_down=True)
            return self._status(now)
        if count == 0:
            version = f" (driver {self._driver_version})" if self._driver_version else ""
            self._set("no_gpu", f"NVML found no NVIDIA GPU{version}", HINTS["no_gpu"])
            self._backoff.reset()
            return self._status(now)
        if len(self._devices) != count:
            self._devices = [_Device(index=i) for i in range(count)]

        self._model_cache = None  # the models callback runs at most once per read
        records: list[GpuRecord] = []
        failures: list[str] = []
        seen_pids: set[int] = set()
        for device in self._devices:
            try:
                records.append(self._read_device(device, seen_pids))
            except _DeviceFailure as failure:
                failures.append(f"GPU {device.index}: {failure.reason}")
                records.append(
                    GpuRecord(index=device.index, name=device.name, error=failure.reason)
                )
        # Forget names of processes that left the GPUs, so a reused pid is looked up afresh.
        self._names = {pid: name for pid, name in self._names.items() if pid in seen_pids}

        if failures:
            self._fail(now, "; ".join(failures), driver_down=False)
            return self._status(now, records)
        self._set("ok", None, None)
        self._backoff.reset()
        return self._status(now, records)

    def _init(self, now: float) -> bool:
        try:
            self._nvml.nvmlInit()
        except Exception as exc:
            if not self._is_nvml_error(exc) and not isinstance(exc, OSError):
                raise
            reason = self._reason_of(exc)
            if self._ever_initialised:
                # NVML worked before: this is a driver failure we keep retrying with backoff.
                self._fail(now, reason, driver_down=True)
            else:
                library_missing = exc.__class__.__name__ == "NVMLError_LibraryNotFound"
                self._set("no_driver", reason, HINTS["library" if library_missing else "no_driver"])
                self._retry_at = now + self._no_driver_retry_s
            return False
        self._initialised = True
        self._ever_initialised = True
        self._devices = []
        version = self._soft(lambda: self._nvml.nvmlSystemGetDriverVersion())
        self._driver_version = self._text(version)
        return True

    def _shutdown(self) -> None:
        if self._initialised:
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:  # a dying driver may refuse; the handles are dropped anyway
                log.debug("nvmlShutdown failed: %s", exc)
        self._initialised = False
        self._devices = []

    def _fail(self, now: float, reason: str, *, driver_down: bool) -> None:
        if self._state != "error" or self._reason != reason:
            log.warning("GPU telemetry error: %s", reason)
        self._set("error", reason, HINTS["error"])
        if driver_down:
            self._shutdown()
        if self._retry_at is None:
            self._retry_at = now + self._backoff.next()

    def _set(self, state: GpuState, reason: str | None, hint: str | None) -> None:
        self._state, self._reason, self._hint = state, reason, hint

    def _status(self, now: float, gpus: list[GpuRecord] | None = None) -> GpuStatus:
        retry = None
        if self._retry_at is not None and self._state in ("error", "no_driver"):
            retry = round(max(0.0, self._retry_at - now), 3)
        return GpuStatus(
            state=self._state,
            reason=self._reason,
            hint=self._hint,
            driver_version=self._driver_version,
            gpus=gpus or [],
            retry_in_s=retry,
        )

    # -- one device -----------------------------------------------------------------------

    def _read_device(self, device: _Device, seen_pids: set[int]) -> GpuRecord:
        nvml = self._nvml
        if device.handle is None:
            try:
                device.handle = nvml.nvmlDeviceGetHandleByIndex(device.index)
            except Exception as exc:
                if not self._is_nvml_error(exc):
                    raise
                raise _DeviceFailure(self._reason_of(exc)) from exc
        handle = device.handle
        if not device.static_read:
            device.name = self._text(
                self._field(device, "name", lambda: nvml.nvmlDeviceGetName(handle))
            )
            device.uuid = self._text(
                self._field(device, "uuid", lambda: nvml.nvmlDeviceGetUUID(handle))
            )
            device.clock_graphics_max_mhz = self._field(
                device,
                "max_graphics",
                lambda: nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_GRAPHICS),
            )
            device.clock_memory_max_mhz = self._field(
                device,
                "max_memory",
                lambda: nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_MEM),
            )
            device.static_read = True

        record = GpuRecord(
            index=device.index,
            name=device.name,
            uuid=device.uuid,
            clock_graphics_max_mhz=device.clock_graphics_max_mhz,
            clock_memory_max_mhz=device.clock_memory_max_mhz,
        )
        util = self._field(
            device, "utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle)
        )
        if util is not None:
            record.utilization_pct = self._number(util.gpu)
            record.memory_utilization_pct = self._number(util.memory)
        memory = self._field(device, "memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        if memory is not None:
            record.memory_total_bytes = self._number(memory.total)
            record.memory_used_bytes = self._number(memory.used)
            record.memory_free_bytes = self._number(memory.free)
        record.temperature_c = self._field(
            device,
            "temperature",
            lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
        )
        record.power_w = self._scaled(
            self._field(device, "power", lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        )
        record.power_limit_w = self._scaled(
            self._field(device, "power_limit", lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle))
        )
        record.energy_j = self._scaled(
            self._field(device, "energy", lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        )
        record.fan_pct = self._field(device, "fan", lambda: nvml.nvmlDeviceGetFanSpeed(handle))
        record.clock_graphics_mhz = self._field(
            device,
            "clock_graphics",
            lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_GRAPHICS),
        )
        record.clock_sm_mhz = self._field(
            device, "clock_sm", lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)
        )
        record.clock_memory_mhz = self._field(
            device, "clock_memory", lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM)
        )
        record.processes = self._processes(device, seen_pids)
        return record

    def _processes(self, device: _Device, seen_pids: set[int]) -> list[GpuProcess]:
        nvml, handle = self._nvml, device.handle
        compute = self._field(
            device, "compute_procs", lambda: nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        )
        graphics = self._field(
            device, "graphics_procs", lambda: nvml.nvmlDeviceGetGraphicsRunningProcesses(handle)
        )
        by_pid: dict[int, GpuProcess] = {}
        for kind, infos in (("C", compute or []), ("G", graphics or [])):
            for info in infos:
                pid = int(info.pid)
                used = self._number(getattr(info, "usedGpuMemory", None))
                known = by_pid.get(pid)
                if known is not None:
                    # In both lists (e.g. a CUDA app drawing with OpenGL): one row, like nvidia-smi.
                    known.kind = "C+G" if known.kind != kind else kind
                    if known.used_memory_bytes is None:
                        known.used_memory_bytes = used
                    continue
                by_pid[pid] = GpuProcess(pid=pid, kind=kind, used_memory_bytes=used)
        for pid, process in by_pid.items():
            seen_pids.add(pid)
            if pid not in self._names:
                self._names[pid] = self._process_name(pid)
            process.name = self._names[pid]
            if pid == self.own_pid:
                process.is_self = True
                process.models = self._models()
        return sorted(by_pid.values(), key=lambda p: -(p.used_memory_bytes or 0))

    def _models(self) -> list[str]:
        if self._model_cache is None:
            names: list[str] = []
            if self._model_names is not None:
                try:
                    names = [str(n) for n in self._model_names()]
                except Exception:
                    log.exception("model_names callback failed")
            self._model_cache = names
        return list(self._model_cache)

    # -- field helpers --------------------------------------------------------------------

    def _field(self, device: _Device, key: str, call: Callable[[], _T]) -> _T | None:
        """One NVML query: the value, None when unsupported/unavailable, _DeviceFailure if fatal."""
        if key in device.unsupported:
            return None
        try:
            value = call()
        except Exception as exc:
            kind = self._classify(exc)
            if kind == "unsupported":
                device.unsupported.add(key)
                return None
            if kind == "transient":
                return None
            if kind == "fatal":
                raise _DeviceFailure(self._reason_of(exc)) from exc
            raise
        if isinstance(value, int) and value in (_UINT_MAX, _ULONGLONG_MAX):
            return None
        return value

    def _soft(self, call: Callable[[], _T]) -> _T | None:
        try:
            return call()
        except Exception as exc:
            if self._classify(exc) == "bug":
                raise
            return None

    def _classify(self, exc: BaseException) -> str:
        if self._nvml_error is not None and isinstance(exc, self._nvml_error):
            code = getattr(exc, "value", None)
            if code in self._unsupported_codes:
                return "unsupported"
            if code in self._transient_codes:
                return "transient"
            return "fatal"
        if isinstance(exc, self._unsupported_types):
            return "unsupported"
        if isinstance(exc, UnicodeDecodeError):  # garbage in a driver string buffer
            return "transient"
        return "bug"

    def _is_nvml_error(self, exc: BaseException) -> bool:
        return self._nvml_error is not None and isinstance(exc, self._nvml_error)

    def _codes(self, names: Sequence[str]) -> frozenset[int]:
        values = (getattr(self._nvml, f"NVML_ERROR_{name}", None) for name in names)
        return frozenset(v for v in values if isinstance(v, int))

    @staticmethod
    def _reason_of(exc: BaseException) -> str:
        try:
            text = str(exc)
        except Exception:  # NVMLError.__str__ may call back into a broken library
            text = ""
        return text or exc.__class__.__name__

    @staticmethod
    def _text(value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        return str(value)

    @staticmethod
    def _number(value: Any) -> int | None:
        if value is None:
            return None
        number = int(value)
        return None if number in (_UINT_MAX, _ULONGLONG_MAX) else number

    @staticmethod
    def _scaled(milli: int | None) -> float | None:
        # NVML reports milliwatts and millijoules; the schema uses watts and joules.
        return None if milli is None else milli / 1000.0
