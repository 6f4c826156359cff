"""The fake must behave like the real pynvml where the reader depends on it."""

from __future__ import annotations

import inspect

import pynvml
import pytest

from . import fake_pynvml
from .fake_pynvml import FakeNvml, two_gpus


def test_error_codes_and_classes_match_real_module() -> None:
    real_codes = {n: getattr(pynvml, n) for n in dir(pynvml) if n.startswith("NVML_ERROR_")}
    fake_codes = {
        n: getattr(fake_pynvml, n) for n in dir(fake_pynvml) if n.startswith("NVML_ERROR_")
    }
    assert fake_codes == real_codes

    real_classes = sorted(n for n in dir(pynvml) if n.startswith("NVMLError_"))
    fake_classes = sorted(n for n in dir(fake_pynvml) if n.startswith("NVMLError_"))
    assert fake_classes == real_classes

    for name, code in real_codes.items():
        real = pynvml.NVMLError(code)
        fake = fake_pynvml.NVMLError(code)
        assert type(fake).__name__ == type(real).__name__, name
        assert isinstance(fake, fake_pynvml.NVMLError)
        assert fake.value == real.value == code
        if code in pynvml.NVMLError._errcode_to_string:
            assert str(fake) == str(real), name
    # Raising a subclass directly gives its code, as in the real module.
    assert fake_pynvml.NVMLError_GpuIsLost().value == pynvml.NVMLError_GpuIsLost().value


def test_constants_and_api_names_exist_in_real_module() -> None:
    for name in (
        "NVML_TEMPERATURE_GPU",
        "NVML_CLOCK_GRAPHICS",
        "NVML_CLOCK_SM",
        "NVML_CLOCK_MEM",
        "NVML_SUCCESS",
    ):
        assert getattr(FakeNvml, name) == getattr(pynvml, name), name
    api = [n for n, _ in inspect.getmembers(FakeNvml, inspect.isfunction) if n.startswith("nvml")]
    assert "nvmlDeviceGetFanSpeed" in api
    for name in api:
        assert callable(getattr(pynvml, name, None)), f"pynvml has no {name}"


def test_calls_before_init_raise_uninitialized_like_real_module() -> None:
    nvml = two_gpus()
    with pytest.raises(nvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    nvml.nvmlInit()
    assert nvml.nvmlDeviceGetCount() == 2
    nvml.nvmlShutdown()
    assert not nvml.initialised


def test_switches() -> None:
    nvml = two_gpus()
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetFanSpeed(handle)
    nvml.fail(nvml.NVML_ERROR_GPU_IS_LOST, gpu=1)
    assert nvml.nvmlDeviceGetCount() == 2
    with pytest.raises(nvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetName(handle)
    nvml.fail(nvml.NVML_ERROR_UNKNOWN)
    with pytest.raises(nvml.NVMLError_Unknown):
        nvml.nvmlDeviceGetCount()
    nvml.recover()
    nvml.set_load(0, utilization=99, power_w=300.5)
    first = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetUtilizationRates(first).gpu == 99
    assert nvml.nvmlDeviceGetPowerUsage(first) == 300_500


def test_advance_is_deterministic() -> None:
    a, b = two_gpus(), two_gpus()
    a.advance(5)
    b.advance(5)
    assert [g.utilization for g in a.gpus] == [g.utilization for g in b.gpus]
    assert a.gpus[1].power_mw is None  # the laptop card stays without power readings
