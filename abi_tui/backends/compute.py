"""The one thread that runs llama.cpp compute for every local model in the process.

llama.cpp's CPU backend parallelises each graph with OpenMP, and libgomp keeps a thread team per
thread that calls into it. With a second team in the process its workers outnumber the cores and
libgomp throttles spin-waiting at barriers: measured here on gemma-3-270m, a decode called from a
second thread took 17-20 ms instead of 14.5 ms, a 9-token prefill 36-43 ms instead of 27 ms.
So decode steps of all models, warm-ups and embeddings run on this thread, round-robin; nothing
else in the process calls llama_decode.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from abi_tui.backends.base import hold_wakes, send_wakes

log = logging.getLogger(__name__)
T = TypeVar("T")


class Steppable(Protocol):
    def has_work(self) -> bool: ...

    def step(self) -> None: ...

    def idle_step(self) -> bool: ...


class ComputeThread:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jobs: deque[tuple[Callable[[], Any], Future]] = deque()
        self._models: list[Steppable] = []
        self._thread: threading.Thread | None = None

    def _ensure_started(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="llama-compute", daemon=True)
            self._thread.start()

    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def register(self, model: Steppable) -> None:
        with self._cond:
            self._models.append(model)
            self._ensure_started()

    def unregister(self, model: Steppable) -> None:
        with self._cond:
            if model in self._models:
                self._models.remove(model)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the compute thread and wait for its result (from any other thread)."""
        if self.on_thread():
            return fn()
        future: Future = Future()
        with self._cond:
            self._jobs.append((fn, future))
            self._ensure_started()
            self._cond.notify()
        return future.result()

    def _run(self) -> None:
        hold_wakes()  # sent before each llama_decode and before this thread waits or runs a job
        while True:
            with self._cond:
                idle = not self._jobs and not any(m.has_work() for m in self._models)
                models = list(self._models)
            if idle:
                send_wakes()  # only when idle: with work to do, the next decode sends them
                if any(_idle_step(model) for model in models):  # outside the lock: it may take ms
                    continue
            with self._cond:
                while not self._jobs and not any(m.has_work() for m in self._models):
                    self._cond.wait()
                jobs = list(self._jobs)
                self._jobs.clear()
                models = [m for m in self._models if m.has_work()]
            for fn, future in jobs:
                send_wakes()
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # handed to the caller, never kills the thread
                        future.set_exception(exc)
            for model in models:  # one step each: several models share the cores fairly
                try:
                    model.step()
                except Exception:
                    log.exception("decode step failed")


def _idle_step(model: Steppable) -> bool:
    try:
        return model.idle_step()
    except Exception:  # idle work is an optimisation: a failure never stops the thread
        log.exception("idle step failed")
        return False


COMPUTE = ComputeThread()
