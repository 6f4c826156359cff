"""SHA-256 of model files: whole files (verify), and a part file's prefix as it downloads."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from abi_tui.models.errors import DownloadFailed

MiB = 1024 * 1024


def sha256_file(path: Path, progress: Callable[[int], None] | None = None, block: int = 4 * MiB) -> str:
    """Hash a whole file with one reusable buffer (blocking: call it in a thread)."""
    sha = hashlib.sha256()
    buf = bytearray(block)
    view = memoryview(buf)
    done = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            sha.update(view[:n])
            done += n
            if progress:
                progress(done)
    return sha.hexdigest()


class PrefixHasher:
    """SHA-256 of the part file's contiguous prefix, computed in a thread as bytes land on disk.

    Blocks that extend the prefix are handed over as they are written and hashed from memory
    (the common case: one connection, or the earliest range of several). Bytes written ahead of
    the prefix by other connections are read back from the page cache once the prefix reaches
    them, so several connections can write anywhere while the hash advances in order.
    """

    def __init__(self, path: Path, block: int = 4 * MiB, memory_limit: int = 8 * MiB) -> None:
        self.path = path
        self.block = block
        self.memory_limit = memory_limit
        self.hashed = 0
        self._target = 0
        self._closing = False
        self._abort = False
        self._error: BaseException | None = None
        self._sha = hashlib.sha256()
        self._blocks: dict[int, tuple[list[bytes], int]] = {}  # offset -> (pieces, size)
        self._held = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="abi-sha256", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, offset: int, pieces: list[bytes], size: int) -> None:
        """Bytes just written at `offset` that the hash may take from memory (if it keeps up)."""
        with self._cond:
            if offset >= self.hashed and self._held + size <= self.memory_limit:
                self._blocks[offset] = (pieces, size)
                self._held += size

    def advance(self, offset: int) -> None:
        with self._cond:
            if offset > self._target:
                self._target = offset
                self._cond.notify()

    def abort(self) -> None:
        with self._cond:
            self._abort = True
            self._blocks.clear()
            self._cond.notify()

    async def finish(self, total: int) -> str:
        with self._cond:
            self._target = max(self._target, total)
            self._closing = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join)
        if self._error is not None:
            raise DownloadFailed(f"cannot hash {self.path}: {self._error}")
        if self.hashed != total:
            raise DownloadFailed(f"{self.path} holds {self.hashed} bytes, expected {total}")
        return self._sha.hexdigest()

    def _next_step(self) -> tuple[list[bytes] | None, int]:
        """From memory (pieces, size) when a block starts at the prefix, else (None, bytes to
        read back: up to the next block held in memory or the target)."""
        with self._cond:
            for offset in [o for o in self._blocks if o < self.hashed]:
                self._held -= self._blocks.pop(offset)[1]
            found = self._blocks.pop(self.hashed, None)
            if found is not None:
                self._held -= found[1]
                return found
            ahead = min((o for o in self._blocks if o > self.hashed), default=self._target)
            return None, min(ahead, self._target) - self.hashed

    def _run(self) -> None:
        buf = bytearray(self.block)
        view = memoryview(buf)
        fd: int | None = None
        try:
            while True:
                with self._cond:
                    while self.hashed >= self._target and not self._closing and not self._abort:
                        self._cond.wait()
                    if self._abort or self.hashed >= self._target:
                        return
                while self.hashed < self._target and not self._abort:
                    pieces, size = self._next_step()
                    if pieces is not None:
                        for piece in pieces:
                            self._sha.update(piece)
                        self.hashed += size
                        continue
                    if fd is None:
                        fd = os.open(self.path, os.O_RDONLY)
                    n = os.preadv(fd, [view[:min(self.block, size)]], self.hashed)
                    if n <= 0:
                        raise OSError(errno.EIO, f"short read at {self.hashed}")
                    self._sha.update(view[:n])
                    self.hashed += n
        except BaseException as exc:  # reported by finish()
            self._error = exc
        finally:
            if fd is not None:
                os.close(fd)
