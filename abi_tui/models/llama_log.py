"""llama.cpp's log, routed to Python logging, and the memory sizes it reports at load time.

llama.cpp has no API for its buffer sizes (weights per device, KV cache, compute); it logs
them when a model and context are created. Capturing those lines during a load gives the pool
the sizes llama.cpp itself allocated, instead of estimates. Every llama.cpp load in the process
goes through `capture()`, one at a time, so each load's sizes are its own; and every load passes
`verbose=True` to llama-cpp-python, whose quiet mode points the process's stderr at /dev/null for
the length of the load and so swallows what other threads log meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import llama_cpp as L

log = logging.getLogger("llama.cpp")
MIB = 1024 * 1024
_SIZE = re.compile(r"^(?P<where>\w+):\s+(?P<device>\S+)\s+(?P<what>.+?) buffer size =\s+(?P<mib>[\d.]+) MiB")


@dataclass
class MemoryReport:
    weights: int = 0
    kv_cache: int = 0
    compute: int = 0
    output: int = 0

    @classmethod
    def from_log(cls, lines: list[str]) -> MemoryReport:
        report = cls()
        for line in lines:
            match = _SIZE.match(line.strip())
            if not match:
                continue
            size = int(float(match["mib"]) * MIB)
            what = match["what"]
            if "KV" in what:
                report.kv_cache += size
            elif "compute" in what:
                report.compute += size
            elif "output" in what:
                report.output += size
            elif "model" in what:
                report.weights += size
        return report

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.output

    def to_dict(self) -> dict[str, int]:
        return {"weights": self.weights, "kv_cache": self.kv_cache, "compute": self.compute + self.output}


class LlamaLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # llama.cpp logs globally: one capture at a time
        self._capture: list[str] | None = None
        self._partial = ""
        self._callback = L.llama_log_callback(self._on_log)  # kept alive: llama.cpp holds the pointer
        L.llama_log_set(self._callback, ctypes.c_void_p(0))

    def _on_log(self, level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        message = self._partial + text.decode("utf-8", errors="replace")
        if not message.endswith("\n"):
            self._partial = message  # llama.cpp sends some lines in pieces
            return
        self._partial = ""
        with self._lock:
            if self._capture is not None:
                self._capture.append(message)
        # ggml levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation
        log.log(logging.WARNING if level == 4 else logging.DEBUG, message.rstrip())

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[str]]:
        """The lines llama.cpp logs until the block ends; one load at a time holds it."""
        lines: list[str] = []
        with self._load_lock:
            with self._lock:
                self._capture = lines
            try:
                yield lines
            finally:
                with self._lock:
                    self._capture = None

    @staticmethod
    def last_error(lines: list[str]) -> str | None:
        for line in reversed(lines):
            lowered = line.lower()
            if "error" in lowered or "failed" in lowered or "invalid" in lowered:
                return line.strip().split(": ", 1)[-1]
        return None


LLAMA_LOG = LlamaLog()
