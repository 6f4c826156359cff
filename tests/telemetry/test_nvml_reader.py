"""NvmlReader against the fake pynvml (deterministic) and against the real module (this host)."""

from __future__ import annotations

import json

import pynvml
import pytest

from abi_tui.telemetry import GpuRecord, GpuStatus, NvmlReader, na

from .fake_pynvml import GIB, MIB, FakeNvml, two_gpus

OWN_PID = 424242


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_reader(nvml: FakeNvml, clock: FakeClock | None = None, **kwargs: object) -> NvmlReader:
    names = {OWN_PID: "abi", 31337: "python3", 2001: "Xorg"}
    return NvmlReader(
        nvml,
        own_pid=OWN_PID,
        process_name=names.get,
        clock=clock or FakeClock(),
        **kwargs,  # type: ignore[arg-type]
    )


def test_two_gpus_read_with_na_where_unsupported() -> None:
    reader = make_reader(two_gpus(OWN_PID))
    status = reader.read()

    assert status.state == "ok" and status.reason is None
    assert status.driver_version == "550.54.15"
    full, laptop = status.gpus
    assert full.name == "NVIDIA GeForce RTX 4090"
    assert (full.utilization_pct, full.memory_utilization_pct) == (37, 21)
    assert (full.memory_used_bytes, full.memory_total_bytes) == (9 * GIB, 24 * GIB)
    assert full.memory_free_bytes == 15 * GIB
    assert full.temperature_c == 61
    assert (full.power_w, full.power_limit_w, full.fan_pct) == (215.5, 450.0, 48)
    assert (full.clock_graphics_mhz, full.clock_sm_mhz, full.clock_memory_mhz) == (
        2520,
        2520,
        10501,
    )
    assert (full.clock_graphics_max_mhz, full.clock_memory_max_mhz) == (3120, 10501)
    assert full.energy_j == pytest.approx(123456.789)

    assert laptop.name == "NVIDIA GeForce MX450"
    assert laptop.utilization_pct == 3 and laptop.temperature_c == 47
    assert laptop.fan_pct is None and laptop.power_w is None and laptop.power_limit_w is None
    assert laptop.energy_j is None and laptop.error is None
    assert na(laptop.fan_pct, "{}%") == "N/A" and na(full.fan_pct, "{}%") == "48%"
    # Plain data all the way down: what /api/telemetry sends and the dashboard reads back.
    as_json = json.loads(json.dumps(status.to_dict(), allow_nan=False))
    assert GpuStatus.from_dict(as_json) == status


def test_unsupported_fields_are_not_asked_again() -> None:
    nvml = two_gpus()
    reader = make_reader(nvml)
    reader.read()
    fan_calls = nvml.calls["nvmlDeviceGetFanSpeed"]
    name_calls = nvml.calls["nvmlDeviceGetName"]
    reader.read()
    reader.read()
    # GPU 1 said "not supported" once and is skipped; GPU 0 is asked every time.
    assert nvml.calls["nvmlDeviceGetFanSpeed"] == fan_calls + 2
    assert nvml.calls["nvmlDeviceGetName"] == name_calls  # static: read once per NVML session
    assert nvml.calls["nvmlInit"] == 1


def test_values_follow_the_fake_load() -> None:
    nvml = two_gpus()
    reader = make_reader(nvml)
    nvml.set_load(0, utilization=91, memory_used=20 * GIB, temperature=80, power_w=420.0)
    gpu = reader.read().gpus[0]
    assert (gpu.utilization_pct, gpu.memory_used_bytes, gpu.temperature_c, gpu.power_w) == (
        91,
        20 * GIB,
        80,
        420.0,
    )


def test_own_process_is_marked_with_its_models() -> None:
    nvml = two_gpus(OWN_PID)
    reader = make_reader(nvml, model_names=lambda: ["gemma-3-270m-Q4_K_M"])
    processes = reader.read().gpus[0].processes
    by_pid = {p.pid: p for p in processes}
    ours = by_pid[OWN_PID]
    assert ours.is_self and ours.models == ["gemma-3-270m-Q4_K_M"]
    assert ours.kind == "C" and ours.used_memory_bytes == 6 * GIB and ours.name == "abi"
    assert not by_pid[31337].is_self and by_pid[31337].models == []
    assert by_pid[2001].kind == "G" and by_pid[2001].name == "Xorg"
    assert [p.pid for p in processes] == [OWN_PID, 31337, 2001]  # biggest first


def test_process_in_both_lists_is_one_row_and_missing_memory_is_na() -> None:
    nvml = two_gpus()
    nvml.set_processes(1, compute=[(77, 100 * MIB)], graphics=[(77, 100 * MIB), (78, None)])
    processes = {p.pid: p for p in make_reader(nvml).read().gpus[1].processes}
    assert processes[77].kind == "C+G" and processes[77].used_memory_bytes == 100 * MIB
    assert processes[78].used_memory_bytes is None


def test_broken_model_callback_does_not_break_the_reading() -> None:
    def broken() -> list[str]:
        raise RuntimeError("pool went away")

    status = make_reader(two_gpus(OWN_PID), model_names=broken).read()
    assert status.state == "ok"
    assert status.gpus[0].processes[0].is_self and status.gpus[0].processes[0].models == []


@pytest.mark.parametrize("code", ["NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_UNKNOWN"])
def test_driver_error_mid_run_then_recovery_with_backoff(code: str) -> None:
    nvml, clock = two_gpus(), FakeClock()
    reader = make_reader(nvml, clock, retry_initial_s=1.0, retry_max_s=4.0)
    assert reader.read().state == "ok"

    nvml.fail(getattr(nvml, code))
    reason = str(nvml.NVMLError(getattr(nvml, code)))
    status = reader.read()
    assert status.state == "error" and status.reason == reason
    assert status.gpus == [] and status.retry_in_s == 1.0
    assert status.hint

    # Before the retry time nothing touches NVML; at it, a re-init is tried and fails again.
    init_calls = nvml.calls["nvmlInit"]
    clock.now += 0.5
    assert reader.read().state == "error"
    assert nvml.calls["nvmlInit"] == init_calls
    clock.now += 0.5
    assert reader.read().retry_in_s == 2.0  # backoff doubled
    assert nvml.calls["nvmlInit"] == init_calls + 1
    clock.now += 2.0
    assert reader.read().retry_in_s == 4.0
    clock.now += 4.0
    assert reader.read().retry_in_s == 4.0  # capped at retry_max_s

    nvml.recover()
    clock.now += 4.0
    status = reader.read()
    assert status.state == "ok" and status.reason is None and len(status.gpus) == 2
    assert status.gpus[0].fan_pct == 48

    # A fresh failure starts again from the initial backoff.
    nvml.fail(getattr(nvml, code))
    assert reader.read().retry_in_s == 1.0


def test_one_lost_gpu_keeps_the_other_reporting() -> None:
    nvml, clock = two_gpus(), FakeClock()
    reader = make_reader(nvml, clock, retry_initial_s=1.0)
    reader.read()

    nvml.fail(nvml.NVML_ERROR_GPU_IS_LOST, gpu=1)
    status = reader.read()
    assert status.state == "error" and status.reason == "GPU 1: GPU is lost"
    healthy, lost = status.gpus
    assert healthy.error is None and healthy.utilization_pct == 37
    assert lost.error == "GPU is lost" and lost.name == "NVIDIA GeForce MX450"
    clock.now += 0.5
    assert reader.read().gpus[0].utilization_pct == 37  # still read between retries

    nvml.recover()
    clock.now += 0.5
    status = reader.read()
    assert status.state == "ok" and all(g.error is None for g in status.gpus)
    assert nvml.refcount == 1  # the re-init shut the old session down first


def test_no_driver_state_keeps_the_library_reason() -> None:
    nvml, clock = FakeNvml(two_gpus().gpus, library_present=False), FakeClock()
    reader = make_reader(nvml, clock, no_driver_retry_s=60.0)
    status = reader.read()
    assert status.state == "no_driver"
    assert status.reason == "NVML Shared Library Not Found"
    assert status.hint and "driver" in status.hint
    assert status.gpus == []

    # The driver can appear later (e.g. after modprobe): tried again, slowly.
    nvml.library_present = True
    clock.now += 30
    assert reader.read().state == "no_driver"
    clock.now += 30
    assert reader.read().state == "ok"


def test_no_gpu_state() -> None:
    status = make_reader(FakeNvml([])).read()
    assert status.state == "no_gpu"
    assert status.reason == "NVML found no NVIDIA GPU (driver 550.54.15)"
    assert status.gpus == []


def test_unavailable_sentinels_become_none() -> None:
    nvml = two_gpus()
    nvml.set_load(0, temperature=0xFFFFFFFF)
    nvml.set_processes(0, compute=[(5, 0xFFFFFFFFFFFFFFFF)])
    gpu = make_reader(nvml).read().gpus[0]
    assert gpu.temperature_c is None
    assert gpu.processes[0].used_memory_bytes is None


def test_close_shuts_nvml_down_and_read_reinitialises() -> None:
    nvml = two_gpus()
    reader = make_reader(nvml)
    reader.read()
    reader.close()
    assert not nvml.initialised
    assert reader.read().state == "ok"
    assert nvml.refcount == 1


def test_cached_read_within_max_age() -> None:
    nvml, clock = two_gpus(), FakeClock()
    reader = make_reader(nvml, clock)
    first = reader.read()
    assert reader.read(max_age_s=1.0) is first
    clock.now += 1.0
    assert reader.read(max_age_s=1.0) is not first


def test_gpu_record_round_trip() -> None:
    record = make_reader(two_gpus(OWN_PID)).read().gpus[0]
    assert GpuRecord.from_dict(record.to_dict()) == record


def test_real_module_on_this_machine() -> None:
    """The real pynvml: without a GPU the state names the driver's own reason."""
    reader = NvmlReader()  # default: `import pynvml`
    try:
        status = reader.read()
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            expected: str | None = str(exc)
        else:
            expected = None
            pynvml.nvmlShutdown()
        if expected is not None:
            assert status.state == "no_driver"
            assert status.reason == expected  # e.g. "NVML Shared Library Not Found"
            assert status.hint and status.gpus == []
        elif status.state == "no_gpu":
            assert status.reason and "no NVIDIA GPU" in status.reason
        else:  # a machine with a GPU
            assert status.state == "ok", status.reason
            assert status.gpus and all(g.name for g in status.gpus)
            assert all(g.memory_total_bytes for g in status.gpus)
        json.dumps(status.to_dict(), allow_nan=False)
    finally:
        reader.close()


def test_missing_nvidia_ml_py_is_a_no_driver_state(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    status = NvmlReader().read()
    assert status.state == "no_driver"
    assert status.reason and status.reason.startswith("nvidia-ml-py is not installed")
    assert status.hint and "pip install nvidia-ml-py" in status.hint
