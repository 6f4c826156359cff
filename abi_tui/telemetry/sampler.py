"""Telemetry sampling in a daemon worker thread.

NVML and psutil are blocking C calls, so they run in their own thread, never on the event loop.
Each tick produces one plain JSON-serialisable dict (schema in `TelemetrySampler.sample_once`),
appended to a bounded history and handed to `on_sample`; the server turns that into an
/api/events message with `loop.call_soon_threadsafe`. Nothing the hardware or a callback does
can kill the thread: every part of a sample is guarded and failures become data.

`pool_stats`, `on_sample` and the reader's `model_names` run in the sampler thread: they must
be cheap and thread-safe, and `on_sample` must not block (hand the sample to the event loop).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from abi_tui.telemetry.history import Sample, TelemetryHistory
from abi_tui.telemetry.host import HostReader
from abi_tui.telemetry.nvml import NvmlReader
from abi_tui.telemetry.schema import GpuStatus, HostRecord

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.25
MAX_INTERVAL_S = 10.0
DEFAULT_INTERVAL_S = 1.0
DEFAULT_HISTORY = 300


class _TelemetrySettings(Protocol):
    interval_s: float
    history: int


def clamp_interval(interval_s: float) -> float:
    """The sampling period within 0.25-10 s; NaN or a non-number gives the 1 s default."""
    try:
        value = float(interval_s)
    except (TypeError, ValueError):
        return DEFAULT_INTERVAL_S
    if math.isnan(value):
        return DEFAULT_INTERVAL_S
    return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, value))


class TelemetrySampler:
    """Samples GPU, host and model-pool statistics every `interval_s` in a worker thread."""

    def __init__(
        self,
        interval_s: float = DEFAULT_INTERVAL_S,
        history: int = DEFAULT_HISTORY,
        nvml_reader: NvmlReader | None = None,
        host_reader: HostReader | None = None,
        pool_stats: Callable[[], dict[str, Any]] | None = None,
        on_sample: Callable[[Sample], None] | None = None,
    ) -> None:
        self._interval_s = clamp_interval(interval_s)
        if self._interval_s != interval_s:
            log.warning(
                "telemetry interval %r s clamped to %s s (allowed %s-%s s)",
                interval_s,
                self._interval_s,
                MIN_INTERVAL_S,
                MAX_INTERVAL_S,
            )
        self._history = TelemetryHistory(history)
        self.nvml_reader = nvml_reader if nvml_reader is not None else NvmlReader()
        self.host_reader = host_reader if host_reader is not None else HostReader()
        self.pool_stats = pool_stats
        self.on_sample = on_sample

        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._seq = 0
        self._cpu_s = 0.0
        self._thread_cpu_s = 0.0
        self._errors = 0
        self._logged: dict[str, str] = {}
        self._sample_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: _TelemetrySettings, **kwargs: Any) -> TelemetrySampler:
        """Build from `Settings.telemetry` (interval_s, history); kwargs as for __init__."""
        return cls(settings.interval_s, settings.history, **kwargs)

    # -- control --------------------------------------------------------------------------

    @property
    def interval_s(self) -> float:
        return self._interval_s

    def set_interval(self, interval_s: float) -> float:
        """Change the period (clamped); a sampler waiting on the old period re-plans at once."""
        with self._cond:
            self._interval_s = clamp_interval(interval_s)
            self._cond.notify_all()
        return self._interval_s

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        with self._cond:
            self._stopping = False
        self._thread = threading.Thread(target=self._run, name="abi-telemetry", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the worker (it wakes at once) and shut NVML down. True when the thread ended."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread = self._thread
        if thread is None:
            self.nvml_reader.close()
            return True
        if thread is threading.current_thread():  # stop() from on_sample: the loop exits itself
            return False
        thread.join(timeout)
        if thread.is_alive():
            # Stuck inside a driver call: leave NVML alone rather than shut it down under the
            # call (nvitop learned that this crashes); the daemon thread dies with the process.
            log.warning("telemetry thread did not stop within %s s", timeout)
            return False
        self._thread = None
        self.nvml_reader.close()
        return True

    # -- reading --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The latest sample and the sampler's state, for /api/telemetry."""
        latest = self._history.latest()
        gpu = latest["gpu"] if latest else None
        return {
            "running": self.running,
            "interval_s": self._interval_s,
            "history_size": len(self._history),
            "history_max": self._history.maxlen,
            "state": gpu["state"] if gpu else None,
            "reason": gpu["reason"] if gpu else None,
            "latest": latest,
            "stats": self.stats(),
        }

    def history(self, n: int | None = None) -> list[Sample]:
        """The last `n` samples (all when None), oldest first. Treat them as read-only."""
        return self._history.last(n)

    @property
    def samples(self) -> TelemetryHistory:
        return self._history

    def stats(self) -> dict[str, Any]:
        """What sampling costs: CPU seconds of the sample work, of the worker thread as a whole
        (its waits and wake-ups included, up to its latest tick), and the mean per sample."""
        count = self._seq
        return {
            "samples": count,
            "sampling_cpu_s": round(self._cpu_s, 6),
            "thread_cpu_s": round(self._thread_cpu_s, 6),
            "mean_cost_ms": round(self._cpu_s * 1000 / count, 4) if count else None,
            "errors": self._errors,
        }

    # -- sampling -------------------------------------------------------------------------

    def sample_once(self) -> Sample:
        """Take one sample in the calling thread, record it and publish it.

        Schema: {"seq": int, "ts": unix seconds, "mono": monotonic seconds, "interval_s",
        "gpu": GpuStatus.to_dict(), "host": HostRecord.to_dict(), "pool": dict | None,
        "cost_ms": CPU milliseconds this sample took in its thread}.
        """
        with self._sample_lock:  # the worker and a direct caller must not interleave readers
            started_cpu = time.thread_time()
            ts, mono = time.time(), time.monotonic()
            try:
                gpu = self.nvml_reader.read().to_dict()
            except Exception as exc:  # a bug: the reader turns driver errors into data itself
                self._report("GPU telemetry read", exc)
                gpu = GpuStatus("error", reason=f"internal error: {exc!r}").to_dict()
            try:
                host = self.host_reader.read().to_dict()
            except Exception as exc:
                self._report("host telemetry read", exc)
                host = HostRecord(error=f"internal error: {exc!r}").to_dict()
            pool: dict[str, Any] | None = None
            if self.pool_stats is not None:
                try:
                    pool = dict(self.pool_stats())
                except Exception as exc:
                    self._report("pool_stats callback", exc)
                    pool = {"error": repr(exc)}
            self._seq += 1
            cost_s = time.thread_time() - started_cpu
            self._cpu_s += cost_s
            sample: Sample = {
                "seq": self._seq,
                "ts": ts,
                "mono": mono,
                "interval_s": self._interval_s,
                "gpu": gpu,
                "host": host,
                "pool": pool,
                "cost_ms": round(cost_s * 1000, 4),
            }
            self._history.append(sample)
        if self.on_sample is not None:
            try:
                self.on_sample(sample)
            except Exception as exc:
                self._report("on_sample callback", exc)
        return sample

    def _report(self, what: str, exc: BaseException) -> None:
        # Count every failure, but log a traceback only when it changes: a callback that stays
        # broken would otherwise fill the log once a second.
        self._errors += 1
        key = f"{what}: {exc!r}"
        if self._logged.get(what) != key:
            self._logged[what] = key
            log.exception("%s failed", what, exc_info=exc)
        else:
            log.debug("%s failed again: %r", what, exc)

    def _run(self) -> None:
        started_cpu = time.thread_time()
        while True:
            tick = time.monotonic()
            try:
                self.sample_once()
            except Exception as exc:  # last resort: the loop must outlive any bug
                self._report("telemetry sample", exc)
            with self._cond:
                # Fixed rate from the tick's start, so a slow sample does not drift the period;
                # re-planned when set_interval() changes it, left at once by stop().
                while not self._stopping:
                    remaining = tick + self._interval_s - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            now_cpu = time.thread_time()
            self._thread_cpu_s += now_cpu - started_cpu
            started_cpu = now_cpu
            if self._stopping:
                return
