"""A fake `pynvml` module for tests: deterministic GPUs, missing capabilities, driver failures.

It mirrors the real module (nvidia-ml-py 13.x) where code depends on it: the same NVML_ERROR_*
codes, the same NVMLError with its `__new__` that maps a code to the NVMLError_* subclass built
by the same naming rule, the same reason strings, NVMLLibraryMismatchError, and "Uninitialized"
for any call before nvmlInit. `test_fake_matches_real_module` keeps it honest.

A `FakeNvml` instance stands in for the module (pass it where `pynvml` would go); each instance
has its own GPUs and switches, so tests do not share state. Values never change unless a test
says so (`set_load`, `set_processes`, `advance`), which keeps the dashboard's snapshots stable.

    nvml = two_gpus(own_pid=os.getpid())
    reader = NvmlReader(nvml)
    nvml.set_load(0, utilization=90, memory_used=20 * GIB)
    nvml.fail(nvml.NVML_ERROR_GPU_IS_LOST)   # every call raises, nvmlInit included
    nvml.recover()
"""

from __future__ import annotations

import string
import sys
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

MIB = 1024**2
GIB = 1024**3

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22
NVML_ERROR_INSUFFICIENT_RESOURCES = 23
NVML_ERROR_FREQ_NOT_SUPPORTED = 24
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_DEPRECATED = 26
NVML_ERROR_NOT_READY = 27
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_INVALID_STATE = 29
NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_CLOCK_VIDEO = 3


class NVMLLibraryMismatchError(Exception):
    pass


class NVMLError(Exception):
    """Same behaviour as pynvml.NVMLError: NVMLError(code) is an instance of the code's subclass."""

    _valClassMapping: dict[int, type[NVMLError]] = {}
    _errcode_to_string = {
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
        NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
        NVML_ERROR_INSUFFICIENT_POWER: "Insufficient External Power",
        NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_TIMEOUT: "Timeout",
        NVML_ERROR_IRQ_ISSUE: "Interrupt Request Issue",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
        NVML_ERROR_CORRUPTED_INFOROM: "Corrupted infoROM",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
        NVML_ERROR_OPERATING_SYSTEM: "The operating system has blocked the request.",
        NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
        NVML_ERROR_MEMORY: "Insufficient Memory",
        NVML_ERROR_UNKNOWN: "Unknown Error",
    }

    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __str__(self) -> str:
        # The real one asks nvmlErrorString for unknown codes; without a library that fails and
        # it falls back to this same text.
        return NVMLError._errcode_to_string.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other: object) -> bool:
        return self.value == getattr(other, "value", None)

    __hash__ = None  # type: ignore[assignment]  # like the real class (__eq__ without __hash__)


def nvmlExceptionClass(code: int) -> type[NVMLError]:
    if code not in NVMLError._valClassMapping:
        raise ValueError(f"nvmlErrorCode {code} is not valid")
    return NVMLError._valClassMapping[code]


def _extract_errors_as_classes() -> None:
    # Same rule as pynvml: NVML_ERROR_GPU_IS_LOST -> NVMLError_GpuIsLost.
    module = sys.modules[__name__]
    for name in [n for n in dir(module) if n.startswith("NVML_ERROR_")]:
        class_name = "NVMLError_" + string.capwords(name.replace("NVML_ERROR_", ""), "_").replace(
            "_", ""
        )
        code = getattr(module, name)

        def make_new(val: int) -> Any:
            def new(cls: type[NVMLError], *args: Any) -> NVMLError:
                return NVMLError.__new__(cls, val)

            return new

        subclass = type(class_name, (NVMLError,), {"__new__": make_new(code)})
        subclass.__module__ = __name__
        setattr(module, class_name, subclass)
        NVMLError._valClassMapping[code] = subclass


_extract_errors_as_classes()

if TYPE_CHECKING:  # the NVMLError_* classes above are made at import time, as in pynvml

    def __getattr__(name: str) -> Any: ...


@dataclass
class FakeGpu:
    """One device. None in a capability field means the device raises NVMLError_NotSupported."""

    name: str
    uuid: str
    memory_total: int
    memory_used: int = 0
    utilization: int = 0
    memory_utilization: int = 0
    temperature: int | None = 40
    power_mw: int | None = 100_000
    power_limit_mw: int | None = 300_000
    fan_pct: int | None = 30
    energy_mj: int | None = 1_000_000
    clocks: dict[int, int] = field(default_factory=lambda: {0: 1500, 1: 1500, 2: 5000, 3: 1200})
    max_clocks: dict[int, int] = field(default_factory=lambda: {0: 2000, 1: 2000, 2: 5000, 3: 1800})
    # (pid, used bytes or None as on Windows/WDDM)
    compute_procs: list[tuple[int, int | None]] = field(default_factory=list)
    graphics_procs: list[tuple[int, int | None]] = field(default_factory=list)


@dataclass(frozen=True)
class FakeHandle:
    index: int


class FakeNvml:
    """Stands in for the `pynvml` module; see the module docstring."""

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        *,
        driver_version: str = "550.54.15",
        library_present: bool = True,
    ) -> None:
        self.gpus = list(gpus or [])
        self.driver_version = driver_version
        self.library_present = library_present
        self.refcount = 0
        self.calls: Counter[str] = Counter()
        self._failure: tuple[int, int | None] | None = None
        self._ticks = 0

    if TYPE_CHECKING:  # constants and error classes are copied onto the class below

        def __getattr__(self, name: str) -> Any: ...

    # -- test controls --------------------------------------------------------------------

    @property
    def initialised(self) -> bool:
        return self.refcount > 0

    def fail(self, code: int = NVML_ERROR_GPU_IS_LOST, gpu: int | None = None) -> None:
        """From now on raise NVMLError(code): on every call (gpu=None), or for one device."""
        self._failure = (code, gpu)

    def recover(self) -> None:
        self._failure = None

    def set_load(
        self,
        index: int,
        *,
        utilization: int | None = None,
        memory_utilization: int | None = None,
        memory_used: int | None = None,
        temperature: int | None = None,
        power_w: float | None = None,
        fan_pct: int | None = None,
        energy_j: float | None = None,
        clocks_mhz: dict[int, int] | None = None,
    ) -> None:
        """Set the readings of one GPU (None leaves a value as it is)."""
        gpu = self.gpus[index]
        values = {
            "utilization": utilization,
            "memory_utilization": memory_utilization,
            "memory_used": memory_used,
            "temperature": temperature,
            "fan_pct": fan_pct,
        }
        for key, value in values.items():
            if value is not None:
                setattr(gpu, key, value)
        if power_w is not None:
            gpu.power_mw = round(power_w * 1000)
        if energy_j is not None:
            gpu.energy_mj = round(energy_j * 1000)
        if clocks_mhz is not None:
            gpu.clocks.update(clocks_mhz)

    def set_processes(
        self,
        index: int,
        compute: list[tuple[int, int | None]] | None = None,
        graphics: list[tuple[int, int | None]] | None = None,
    ) -> None:
        gpu = self.gpus[index]
        gpu.compute_procs = list(compute or [])
        gpu.graphics_procs = list(graphics or [])

    def advance(self, steps: int = 1) -> None:
        """Move every GPU along a fixed load pattern (a demo that still gives stable snapshots)."""
        for _ in range(steps):
            self._ticks += 1
            for number, gpu in enumerate(self.gpus):
                phase = (self._ticks * 7 + number * 29) % 100
                gpu.utilization = phase
                gpu.memory_utilization = phase // 2
                gpu.temperature = None if gpu.temperature is None else 40 + phase // 3
                if gpu.power_mw is not None and gpu.power_limit_mw is not None:
                    gpu.power_mw = gpu.power_limit_mw * (10 + phase * 8 // 10) // 100
                if gpu.energy_mj is not None and gpu.power_mw is not None:
                    gpu.energy_mj += gpu.power_mw  # one second at that power

    # -- the pynvml API subset ------------------------------------------------------------

    def _check(self, name: str, handle: FakeHandle | None = None) -> FakeGpu | None:
        self.calls[name] += 1
        if not self.initialised:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if self._failure is not None:
            code, gpu = self._failure
            if gpu is None or (handle is not None and handle.index == gpu):
                raise NVMLError(code)
        if handle is None:
            return None
        if not 0 <= handle.index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[handle.index]

    def _device(self, name: str, handle: FakeHandle) -> FakeGpu:
        gpu = self._check(name, handle)
        assert gpu is not None
        return gpu

    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if not self.library_present:
            raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
        if self._failure is not None and self._failure[1] is None:
            raise NVMLError(self._failure[0])
        self.refcount += 1

    def nvmlShutdown(self) -> None:
        self.calls["nvmlShutdown"] += 1
        if not self.initialised:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        self.refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        handle = FakeHandle(index)
        self._device("nvmlDeviceGetHandleByIndex", handle)
        return handle

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return self._device("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        return self._device("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> SimpleNamespace:
        gpu = self._device("nvmlDeviceGetUtilizationRates", handle)
        return SimpleNamespace(gpu=gpu.utilization, memory=gpu.memory_utilization)

    def nvmlDeviceGetMemoryInfo(
        self, handle: FakeHandle, version: int | None = None
    ) -> SimpleNamespace:
        gpu = self._device("nvmlDeviceGetMemoryInfo", handle)
        return SimpleNamespace(
            total=gpu.memory_total, used=gpu.memory_used, free=gpu.memory_total - gpu.memory_used
        )

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        gpu = self._device("nvmlDeviceGetTemperature", handle)
        return self._supported(gpu.temperature if sensor == NVML_TEMPERATURE_GPU else None)

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        return self._supported(self._device("nvmlDeviceGetPowerUsage", handle).power_mw)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeHandle) -> int:
        return self._supported(
            self._device("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_mw
        )

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:
        return self._supported(
            self._device("nvmlDeviceGetTotalEnergyConsumption", handle).energy_mj
        )

    def nvmlDeviceGetFanSpeed(self, handle: FakeHandle) -> int:
        return self._supported(self._device("nvmlDeviceGetFanSpeed", handle).fan_pct)

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, clock_type: int) -> int:
        return self._supported(
            self._device("nvmlDeviceGetClockInfo", handle).clocks.get(clock_type)
        )

    def nvmlDeviceGetMaxClockInfo(self, handle: FakeHandle, clock_type: int) -> int:
        return self._supported(
            self._device("nvmlDeviceGetMaxClockInfo", handle).max_clocks.get(clock_type)
        )

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[SimpleNamespace]:
        return self._procs(
            self._device("nvmlDeviceGetComputeRunningProcesses", handle).compute_procs
        )

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: FakeHandle) -> list[SimpleNamespace]:
        return self._procs(
            self._device("nvmlDeviceGetGraphicsRunningProcesses", handle).graphics_procs
        )

    @staticmethod
    def _supported(value: int | None) -> int:
        if value is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return value

    @staticmethod
    def _procs(entries: list[tuple[int, int | None]]) -> list[SimpleNamespace]:
        # The fields of pynvml's c_nvmlProcessInfo_v3_t (0xFFFFFFFF = "no MIG instance").
        return [
            SimpleNamespace(
                pid=pid,
                usedGpuMemory=used,
                gpuInstanceId=0xFFFFFFFF,
                computeInstanceId=0xFFFFFFFF,
                usedGpuCcProtectedMemory=0,
            )
            for pid, used in entries
        ]


# Give instances the module's constants and error classes, as `pynvml.X` would have them.
for _name, _value in list(vars(sys.modules[__name__]).items()):
    if (
        _name.startswith(("NVML_", "NVMLError", "NVMLLibraryMismatchError"))
        or _name == "nvmlExceptionClass"
    ):
        setattr(
            FakeNvml,
            _name,
            staticmethod(_value) if callable(_value) and not isinstance(_value, type) else _value,
        )
del _name, _value


def two_gpus(own_pid: int | None = None, *, own_memory: int = 6 * GIB) -> FakeNvml:
    """The standard fixture: a full-featured desktop card and a laptop card with no fan or power.

    GPU 0 runs `own_pid` (the abi server, if given) plus one other compute process and Xorg;
    GPU 1 runs nothing.
    """
    full = FakeGpu(
        name="NVIDIA GeForce RTX 4090",
        uuid="GPU-00000000-0000-4000-8000-000000004090",
        memory_total=24 * GIB,
        memory_used=9 * GIB,
        utilization=37,
        memory_utilization=21,
        temperature=61,
        power_mw=215_500,
        power_limit_mw=450_000,
        fan_pct=48,
        energy_mj=123_456_789,
        clocks={0: 2520, 1: 2520, 2: 10501, 3: 1965},
        max_clocks={0: 3120, 1: 3120, 2: 10501, 3: 2415},
        compute_procs=[
            *([(own_pid, own_memory)] if own_pid is not None else []),
            (31337, 1536 * MIB),
        ],
        graphics_procs=[(2001, 312 * MIB)],
    )
    laptop = FakeGpu(
        name="NVIDIA GeForce MX450",
        uuid="GPU-00000000-0000-4000-8000-000000000450",
        memory_total=2 * GIB,
        memory_used=128 * MIB,
        utilization=3,
        memory_utilization=1,
        temperature=47,
        power_mw=None,
        power_limit_mw=None,
        fan_pct=None,
        energy_mj=None,
        clocks={0: 300, 1: 300, 2: 405, 3: 540},
        max_clocks={0: 1575, 1: 1575, 2: 5001, 3: 1455},
    )
    return FakeNvml([full, laptop])
