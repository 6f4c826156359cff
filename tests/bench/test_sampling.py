"""Energy and tokens per joule from telemetry samples on the run's clock."""

from __future__ import annotations

import pytest

from abi_tui.bench.sampling import TelemetryRecorder, compact, energy


def sample(t: float, gpus: list[dict]) -> dict:
    return {"t_s": t, "gpus": gpus, "gpu_state": "ok" if gpus else "no_driver"}


def test_energy_from_the_counter_interpolated_to_the_window() -> None:
    # Two GPUs; counters rise 100 J/s and 50 J/s; samples every second.
    samples = [sample(t, [{"index": 0, "energy_j": 1000 + 100 * t, "power_w": 100.0, "utilization_pct": 90},
                          {"index": 1, "energy_j": 500 + 50 * t, "power_w": 50.0, "utilization_pct": 30}])
               for t in range(6)]
    out = energy(samples, 1.5, 3.5, tokens=600, source="client NVML", reason=None)
    assert out["available"] and out["method"] == "energy counter"
    assert out["energy_j"] == pytest.approx(2.0 * 150)
    assert out["tokens_per_joule"] == pytest.approx(600 / 300)
    assert out["mean_power_w"] == pytest.approx(75.0)


def test_energy_from_power_when_the_counter_is_missing() -> None:
    samples = [sample(t, [{"index": 0, "energy_j": None, "power_w": 80.0}]) for t in (0.0, 0.5, 1.0, 1.5, 2.0)]
    out = energy(samples, 0.0, 2.0, tokens=320, source="server /api/telemetry", reason=None)
    assert out["method"] == "power integral" and out["energy_j"] == pytest.approx(160.0)
    assert out["tokens_per_joule"] == pytest.approx(2.0)


def test_no_gpu_says_why() -> None:
    out = energy([sample(0, []), sample(1, [])], 0, 1, tokens=10, source=None, reason="no NVIDIA GPU readable here")
    assert out == {**out, "available": False, "tokens_per_joule": None, "reason": "no NVIDIA GPU readable here"}
    no_power = [sample(t, [{"index": 0, "energy_j": None, "power_w": None}]) for t in (0, 1)]
    assert "no energy or power" in energy(no_power, 0, 1, 10, "x", None)["reason"]


def test_compact_sample_and_remote_clock_mapping() -> None:
    raw = {"seq": 3, "ts": 1_000_010.0, "mono": 510.0,
           "host": {"cpu_percent": 40.0, "load_avg": [1.5, 1, 1], "memory_used_bytes": 9,
                    "process": {"cpu_percent": 12.0, "rss_bytes": 5}},
           "gpu": {"state": "ok", "gpus": [{"index": 0, "power_w": 70.0, "energy_j": 5.0, "name": "H100"}]}}
    small = compact(raw, 2.0)
    assert small["cpu_percent"] == 40.0 and small["process_rss_bytes"] == 5 and small["load_avg_1m"] == 1.5
    assert small["gpus"] == [{"index": 0, "utilization_pct": None, "memory_used_bytes": None, "power_w": 70.0,
                              "energy_j": 5.0, "temperature_c": None}]
    local = TelemetryRecorder(t0=500.0, server_is_local=True)
    assert local._server_t(raw) == pytest.approx(10.0)  # same CLOCK_MONOTONIC
    remote = TelemetryRecorder(t0=500.0, server_is_local=False)
    remote._wall_minus_mono = 1_000_000.0 - 500.0  # wall clock read 1e6 when monotonic read 500
    assert remote._server_t(raw) == pytest.approx(10.0)
