"""Host CPU, RAM and the server process through psutil.

Kept cheap for 1-4 Hz sampling: no blocking intervals (psutil's `interval=None` compares with the
previous call), one reused `psutil.Process` (its CPU percent is relative to its own last call),
and `oneshot()` so the process fields come from one read of /proc.
"""

from __future__ import annotations

import os
import threading

import psutil

from abi_tui.telemetry.schema import HostRecord, ProcessRecord


class HostReader:
    """Reads the machine and one process (the server, by default this process)."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        self._process: psutil.Process | None = None
        self._process_primed = False
        # psutil keeps the previous system CPU times per calling thread: the first call from a
        # thread has nothing to compare with, so its percentages are meaningless (reported None).
        self._primed_threads: set[int] = set()
        self._cpu_count = psutil.cpu_count(logical=True)

    def read(self) -> HostRecord:
        record = HostRecord(cpu_count=self._cpu_count)
        try:
            per_core = psutil.cpu_percent(interval=None, percpu=True)
            thread = threading.get_ident()
            if thread in self._primed_threads:
                record.cpu_per_core = [float(v) for v in per_core]
                # Every core covers the same wall time, so the machine total is their mean.
                record.cpu_percent = round(sum(per_core) / len(per_core), 2) if per_core else None
            else:
                self._primed_threads.add(thread)
            if hasattr(os, "getloadavg"):
                record.load_avg = [round(v, 2) for v in os.getloadavg()]
            memory = psutil.virtual_memory()
            record.memory_total_bytes = int(memory.total)
            record.memory_available_bytes = int(memory.available)
            record.memory_used_bytes = int(memory.total - memory.available)
            record.memory_percent = float(memory.percent)
            swap = psutil.swap_memory()
            record.swap_total_bytes = int(swap.total)
            record.swap_used_bytes = int(swap.used)
        except (OSError, psutil.Error) as exc:
            record.error = f"host: {exc}"
        record.process = self._read_process()
        return record

    def _read_process(self) -> ProcessRecord:
        record = ProcessRecord(pid=self.pid)
        try:
            if self._process is None:
                self._process = psutil.Process(self.pid)
                self._process_primed = False
            process = self._process
            with process.oneshot():
                record.name = process.name()
                record.rss_bytes = int(process.memory_info().rss)
                record.num_threads = int(process.num_threads())
                cpu = process.cpu_percent(interval=None)
            # The first call on a Process object has no earlier reading: 0.0 would be a lie.
            record.cpu_percent = round(cpu, 2) if self._process_primed else None
            self._process_primed = True
        except psutil.NoSuchProcess:
            self._process = None
            record.error = f"process {self.pid} not found"
        except (OSError, psutil.Error) as exc:
            record.error = f"process {self.pid}: {exc}"
        return record
