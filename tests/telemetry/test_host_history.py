"""HostReader (real psutil) and TelemetryHistory."""

from __future__ import annotations

import os
import subprocess
import sys

from abi_tui.telemetry import HostReader, HostRecord, TelemetryHistory


def test_host_reader_first_then_second_sample() -> None:
    reader = HostReader()
    first = reader.read()
    # Nothing to compare with yet: N/A rather than a fake 0 %.
    assert first.cpu_percent is None and first.cpu_per_core is None
    assert first.process is not None and first.process.cpu_percent is None
    assert first.memory_total_bytes and first.memory_available_bytes is not None

    second = reader.read()
    assert second.cpu_per_core is not None and len(second.cpu_per_core) == second.cpu_count
    assert second.cpu_percent is not None and 0.0 <= second.cpu_percent <= 100.0
    assert second.process is not None
    assert second.process.pid == os.getpid()
    assert second.process.rss_bytes and second.process.num_threads
    assert second.process.cpu_percent is not None
    assert HostRecord.from_dict(second.to_dict()) == second


def test_host_reader_for_a_process_that_ends() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        reader = HostReader(pid=child.pid)
        assert reader.read().process.error is None  # type: ignore[union-attr]
    finally:
        child.kill()
        child.wait()
    record = reader.read()
    assert record.process is not None and record.process.error == f"process {child.pid} not found"
    assert record.memory_total_bytes  # the host part is unaffected


def test_history_ring() -> None:
    history = TelemetryHistory(3)
    assert history.latest() is None and history.last() == []
    for seq in range(1, 6):
        history.append(
            {"seq": seq, "gpu": {"gpus": [{"power_w": None if seq == 4 else seq * 10.0}]}}
        )
    assert len(history) == 3 and history.maxlen == 3
    assert [s["seq"] for s in history.last()] == [3, 4, 5]
    assert [s["seq"] for s in history.last(2)] == [4, 5]
    assert history.last(0) == []
    assert history.latest()["seq"] == 5  # type: ignore[index]
    assert history.values(lambda s: s["gpu"]["gpus"][0]["power_w"]) == [30.0, None, 50.0]
    assert history.values(lambda s: s["gpu"]["gpus"][1]["power_w"]) == [None, None, None]
    history.clear()
    assert len(history) == 0
