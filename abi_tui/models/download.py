"""The download engine: one file, resumable, several connections, SHA-256 while writing.

Why our own transfer code rather than huggingface_hub's `hf_hub_download`: that function uses one
connection per file, has no stall detection, no pause/resume/cancel handle and no progress events
a dashboard can show, and it blocks its caller. This engine runs on asyncio (aiohttp) so the
server can drive many downloads without threads per byte, and keeps every piece of state on disk:

    <file>.part        the bytes so far (written at their offsets, several ranges at once)
    <file>.part.json   the ranges and how far each got, saved every second and on exit, so a
                       run killed with SIGKILL resumes where the saved positions say
    <file>.lock        flock: one download of a file at a time, across processes

Disk writes go to a small thread pool and the SHA-256 runs in its own thread (hashing.py): it
takes the blocks that extend the file's contiguous prefix from memory and reads back from the
page cache what other connections wrote ahead of it, so the event loop never blocks on the disk
or the hash, and a resumed download hashes the bytes already there while new ones arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from abi_tui.backoff import Backoff, retry_after_s
from abi_tui.models.errors import ChecksumMismatch, DownloadFailed, InsufficientSpace
from abi_tui.models.filelock import FileLock
from abi_tui.models.hashing import PrefixHasher, sha256_file
from abi_tui.models.progress import DownloadState
from abi_tui.models.units import human_bytes

MiB = 1024 * 1024
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
STATE_VERSION = 1


@dataclass
class DownloadOptions:
    connections: int = 4
    min_part_size: int = 8 * MiB       # the smallest range; files under 2x this use one connection
    max_part_size: int = 64 * MiB
    stall_timeout_s: float = 15.0
    connect_timeout_s: float = 30.0
    max_retries: int = 8               # consecutive failures without a byte of progress
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    verify: bool = True
    free_space_margin: int = 32 * MiB
    write_block: int = 1 * MiB
    state_save_interval_s: float = 1.0

    def backoff(self) -> Backoff:
        """Between attempts at a range: doubling from backoff_base_s up to backoff_max_s, +-50%."""
        return Backoff(initial=self.backoff_base_s, maximum=self.backoff_max_s, jitter=0.5)


@dataclass
class Chunk:
    """A byte range [start, end) of the file; `pos` is the first byte not yet on disk."""

    start: int
    end: int | None
    pos: int
    busy: bool = False

    @property
    def done(self) -> bool:
        return self.end is not None and self.pos >= self.end


@dataclass
class FileResult:
    path: Path
    size: int
    sha256: str | None
    verified: bool
    fetched: int = 0
    reused: bool = False


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None, stalled: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.stalled = stalled


class _RestartFromZero(Exception):
    """The part on disk cannot be continued (server ignores Range, file changed, bad 416)."""


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def check_free_space(directory: Path, needed: int, margin: int) -> None:
    free = free_bytes(directory)
    if needed + margin > free:
        raise InsufficientSpace(
            f"not enough free space in {directory}: {human_bytes(needed)} needed "
            f"(+{human_bytes(margin)} margin), {human_bytes(free)} free")


def plan_chunks(total: int, prefix: int, options: DownloadOptions) -> list[Chunk]:
    """Ranges for the bytes not yet on disk, handed out in order, shrinking towards the end
    (each about 1/(2 x connections) of what is left, within [min_part_size, max_part_size]).

    The hash follows the contiguous prefix, so when the last range arrives it still has to
    catch up over the ranges other connections finished ahead of it; small final ranges keep
    that tail (and the wait for the slowest connection) short, large early ones keep the
    number of requests low.
    """
    chunks = [Chunk(0, prefix, prefix)] if prefix > 0 else []
    remaining = total - prefix
    if options.connections <= 1 or remaining < 2 * options.min_part_size:
        return [*chunks, Chunk(prefix, total, prefix)] if remaining > 0 or not chunks else chunks
    start = prefix
    while start < total:
        left = total - start
        size = max(options.min_part_size, min(options.max_part_size, math.ceil(left / (2 * options.connections))))
        end = total if left - size < options.min_part_size else start + size
        chunks.append(Chunk(start, end, start))
        start = end
    return chunks


def contiguous_prefix(chunks: list[Chunk]) -> int:
    for chunk in chunks:
        if not chunk.done:
            return chunk.pos
    return chunks[-1].end or 0 if chunks else 0


def _write_all(fd: int, pieces: list[bytes], offset: int) -> None:
    """pwritev the received pieces without joining them (no extra copy); finish partial writes."""
    total = sum(len(p) for p in pieces)
    written = os.pwritev(fd, pieces, offset)
    if written < total:
        rest = b"".join(pieces)[written:]
        view = memoryview(rest)
        while view:
            n = os.pwrite(fd, view, offset + written)
            written += n
            view = view[n:]


def _create_empty(path: Path) -> None:
    """`path.touch()` that will not follow a symlink planted at `path`."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644))


_CONTENT_RANGE_RE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


def _content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    match = _CONTENT_RANGE_RE.match(value or "")
    if not match:
        return None, None, None
    start = int(match.group(1)) if match.group(1) else None
    end = int(match.group(2)) if match.group(2) else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return start, end, total


class FileDownload:
    """Download `url` to `dest`. `size` and `sha256` come from the hub when known; `reuse`
    decides whether an existing `dest` is already complete (the cache's sidecar says so)."""

    def __init__(self, url: str, dest: Path, *, size: int | None = None, sha256: str | None = None,
                 headers: dict[str, str] | None = None, options: DownloadOptions | None = None,
                 on_state: Callable[[FileDownload], None] | None = None,
                 reuse: Callable[[Path], FileResult | None] | None = None, use_lock: bool = True) -> None:
        self.url = url
        self.use_lock = use_lock
        self.dest = dest
        self.expected_sha256 = sha256.lower() if sha256 else None
        self.headers = dict(headers or {})
        self.options = options or DownloadOptions()
        self.on_state = on_state
        self.reuse = reuse
        self.part = dest.with_name(dest.name + ".part")
        self.state_path = dest.with_name(dest.name + ".part.json")
        self.lock_path = dest.with_name(dest.name + ".lock")
        self.total: int | None = size
        self.downloaded = 0
        self.fetched = 0
        self.state = DownloadState.QUEUED
        self.message: str | None = None
        self.last_byte_at = time.monotonic()
        self.requests = 0
        self._etag: str | None = None
        self._chunks: list[Chunk] = []
        self._fd: int | None = None
        self._hasher: PrefixHasher | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._state_dirty = False
        self._ranges_ok = True  # hub files and their CDN serve ranges; a HEAD decides for URLs

    # -- reporting -------------------------------------------------------------------------
    def _set(self, state: DownloadState, message: str | None = None) -> None:
        if state == self.state and message == self.message:
            return
        self.state, self.message = state, message
        if self.on_state:
            self.on_state(self)

    # -- entry point -----------------------------------------------------------------------
    async def run(self) -> FileResult:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.lock_path)
        if self.use_lock:  # else the caller holds it
            await lock.acquire(lambda: self._set(DownloadState.QUEUED, "waiting for another download of this file"))
        try:
            if self.dest.exists():
                reused = await self._reuse_existing()
                if reused is not None:
                    return reused
            return await self._download()
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            # The part and its saved ranges stay: the next run resumes from there.
            total = f" of {human_bytes(self.total)}" if self.total else ""
            raise InsufficientSpace(
                f"the disk filled up while writing {self.dest.name} in {self.dest.parent}: "
                f"{human_bytes(self.downloaded)}{total} kept in {self.part.name}; free some space and run the "
                "download again to resume") from None
        finally:
            lock.release()

    async def _reuse_existing(self) -> FileResult | None:
        if self.reuse is not None:
            known = self.reuse(self.dest)
            if known is not None:
                self.downloaded = known.size
                return known
        size = self.dest.stat().st_size
        if self.total is not None and size != self.total:
            self.dest.unlink()
            return None
        if not self.options.verify:
            self.downloaded = size
            return FileResult(self.dest, size, self.expected_sha256, False, reused=True)
        self._set(DownloadState.VERIFYING, "checking the file already there")
        digest = await asyncio.to_thread(sha256_file, self.dest)
        if self.expected_sha256 and digest != self.expected_sha256:
            self.dest.unlink()
            return None
        self.downloaded = size
        return FileResult(self.dest, size, digest, self.expected_sha256 is not None, reused=True)

    # -- state on disk ---------------------------------------------------------------------
    def _load_state(self) -> None:
        part_size = self.part.stat().st_size if self.part.exists() else 0
        saved: dict[str, Any] | None = None
        if self.state_path.exists():
            try:
                saved = json.loads(self.state_path.read_text())
            except (OSError, ValueError):
                saved = None
        chunks: list[Chunk] | None = None
        if saved and saved.get("version") == STATE_VERSION and self._same_file(saved):
            try:
                chunks = [Chunk(int(s), None if e is None else int(e), int(p)) for s, e, p in saved["chunks"]]
            except (KeyError, TypeError, ValueError):
                chunks = None
            if chunks and (saved.get("sequential") or len(chunks) == 1):
                # One connection writes in order: the part's length is the truth (it may be ahead).
                last = chunks[-1]
                last.pos = max(last.pos, min(part_size, last.end if last.end is not None else part_size))
            # A range's bytes must all be inside the part (ranges not yet started may lie beyond it).
            if chunks and any((c.pos > c.start and c.pos > part_size) or c.pos < c.start
                              or (c.end is not None and c.pos > c.end) for c in chunks):
                chunks = None
            if chunks is not None:
                self._etag = saved.get("etag")
                self.total = self.total if self.total is not None else saved.get("size")
        elif saved is None and part_size > 0:
            # A part without state was written by one connection, in order.
            if self.total is None or part_size <= self.total:
                chunks = [Chunk(0, self.total, part_size)]
        if chunks is None and part_size > 0:
            self._discard_part()
        self._chunks = chunks or []
        self.downloaded = sum(c.pos - c.start for c in self._chunks)

    def _same_file(self, saved: dict[str, Any]) -> bool:
        if self.expected_sha256 or saved.get("sha256"):
            same = saved.get("sha256") == self.expected_sha256
        else:
            same = saved.get("url") == self.url
        return same and (self.total is None or saved.get("size") in (None, self.total))

    def _state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "url": self.url, "size": self.total, "sha256": self.expected_sha256,
                "etag": self._etag, "sequential": len(self._chunks) == 1,
                "chunks": [[c.start, c.end, c.pos] for c in self._chunks]}

    def _save_state(self) -> None:
        if not self._chunks:
            return
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(self._state_dict()))
        os.replace(tmp, self.state_path)
        self._state_dirty = False

    def _discard_part(self) -> None:
        for path in (self.part, self.state_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._chunks = []
        self.downloaded = 0

    # -- the transfer ----------------------------------------------------------------------
    async def _download(self) -> FileResult:
        self._set(DownloadState.CONNECTING)
        self._load_state()
        timeout = aiohttp.ClientTimeout(total=None, connect=self.options.connect_timeout_s)
        connector = aiohttp.TCPConnector(limit=max(1, self.options.connections), ttl_dns_cache=300)
        self._pool = self._new_pool()
        monitor: asyncio.Task | None = None
        try:
            async with aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False,
                                             read_bufsize=256 * 1024) as session:
                if self.total is None:
                    await self._probe_size(session)
                if self.total is not None:
                    check_free_space(self.dest.parent, self.total - self.downloaded, self.options.free_space_margin)
                self._plan()
                self._start_hasher()
                monitor = asyncio.create_task(self._monitor())
                restarts = 0
                while True:
                    try:
                        await self._run_workers(session)
                        break
                    except _RestartFromZero as exc:
                        restarts += 1
                        if restarts > 2:
                            raise DownloadFailed(f"{self.dest.name}: {exc}") from None
                        self._set(DownloadState.CONNECTING, f"{exc}; starting again from zero")
                        await self._drain_io(reopen=True)
                        self._restart_from_zero()
                        self._plan(force_single=True)
                        self._start_hasher()
            return await self._finish()
        finally:
            if monitor is not None:
                monitor.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await monitor
            if self._hasher is not None:
                self._hasher.abort()
            await self._drain_io(reopen=False)
            if self.part.exists() and self._chunks:
                with contextlib.suppress(OSError):
                    self._save_state()

    async def _drain_io(self, reopen: bool) -> None:
        """Wait for writes still running in the pool (a cancelled await does not stop them),
        then close the part. Done in a thread that finishes even if this task is cancelled
        again, so the descriptor is never closed (and its number reused) under a write."""
        pool, fd = self._pool, self._fd
        self._fd = None
        self._pool = self._new_pool() if reopen else None

        def close() -> None:
            if pool is not None:
                pool.shutdown(wait=True)
            if fd is not None:
                os.close(fd)

        await asyncio.shield(asyncio.to_thread(close))

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.options.connections + 1, thread_name_prefix="abi-download-io")

    async def _probe_size(self, session: aiohttp.ClientSession) -> None:
        """HEAD a URL of unknown size: the size allows a space check, and with Accept-Ranges
        several connections."""
        self._ranges_ok = False
        try:
            async with session.head(self.url, headers=self._request_headers(), allow_redirects=True) as resp:
                length = resp.headers.get("Content-Length")
                if resp.status == 200 and length and length.isdigit():
                    self.total = int(length)
                    self._ranges_ok = resp.headers.get("Accept-Ranges", "").lower() == "bytes"
                    self._etag = self._etag or resp.headers.get("ETag")
                    for chunk in self._chunks:
                        if chunk.end is None:
                            chunk.end = self.total
        except (TimeoutError, aiohttp.ClientError):
            pass  # the GET will tell

    def _plan(self, force_single: bool = False) -> None:
        if self.total is not None and len(self._chunks) <= 1:
            prefix = contiguous_prefix(self._chunks) if self._chunks else 0
            options = self.options
            if force_single or not self._ranges_ok:
                options = DownloadOptions(**{**options.__dict__, "connections": 1})
            self._chunks = plan_chunks(self.total, min(prefix, self.total), options)
        elif not self._chunks:
            self._chunks = [Chunk(0, None, 0)]
        self.downloaded = sum(c.pos - c.start for c in self._chunks)
        self._state_dirty = True

    def _save_state_soon(self) -> None:
        self._state_dirty = True

    def _start_hasher(self) -> None:
        if self._hasher is not None:
            self._hasher.abort()
        self._hasher = None
        if not self.options.verify:
            return
        if not self.part.exists():
            _create_empty(self.part)
        self._hasher = PrefixHasher(self.part)
        self._hasher.start()
        self._hasher.advance(contiguous_prefix(self._chunks))

    def _restart_from_zero(self) -> None:
        self._discard_part()
        self._etag = None

    def _open_part(self) -> int:
        if self._fd is None:
            # O_NOFOLLOW: a planted symlink at <file>.part must not redirect the bytes elsewhere.
            self._fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        return self._fd

    async def _monitor(self) -> None:
        """Save the ranges every second (so SIGKILL loses at most a second) and flag a stall."""
        last_save = time.monotonic()
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if self.state == DownloadState.DOWNLOADING and now - self.last_byte_at >= self.options.stall_timeout_s:
                self._set(DownloadState.STALLED, f"no data for {self.options.stall_timeout_s:g} s")
            if self._state_dirty and now - last_save >= self.options.state_save_interval_s:
                last_save = now
                state = self._state_dict()
                await asyncio.get_running_loop().run_in_executor(self._pool, self._write_state, state)

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_path)

    async def _run_workers(self, session: aiohttp.ClientSession) -> None:
        pending = [c for c in self._chunks if not c.done]
        if not pending:
            return
        # Save the plan before the first byte lands, so a kill never leaves a part without it.
        await asyncio.get_running_loop().run_in_executor(self._pool, self._write_state, self._state_dict())
        count = max(1, min(self.options.connections, len(pending)))
        tasks = [asyncio.create_task(self._worker(session)) for _ in range(count)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        while True:
            chunk = next((c for c in self._chunks if not c.done and not c.busy), None)
            if chunk is None:
                return
            chunk.busy = True
            try:
                await self._fetch_chunk(session, chunk)
            finally:
                chunk.busy = False

    async def _fetch_chunk(self, session: aiohttp.ClientSession, chunk: Chunk) -> None:
        failures = 0
        while not chunk.done:
            before = chunk.pos
            try:
                await self._stream(session, chunk)
                if chunk.end is None:  # size unknown: a clean end of body is the end of the file
                    chunk.end = chunk.pos
                    self.total = chunk.pos
                return_early = chunk.done
                if return_early:
                    return
                raise _Retryable("the connection closed before the range was complete")
            except _Retryable as exc:
                error = exc
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
                error = _Retryable(f"connection lost ({type(exc).__name__})")
            except (TimeoutError, aiohttp.ClientConnectionError, ConnectionError) as exc:
                error = _Retryable(f"cannot connect ({exc or type(exc).__name__})")
            if chunk.pos > before:
                failures = 0
            failures += 1
            if failures > self.options.max_retries:
                raise DownloadFailed(f"{self.dest.name}: giving up after {failures} attempts: {error}")
            if error.stalled:
                self._set(DownloadState.STALLED, f"{error}; reconnecting")
                if failures == 1:
                    continue  # the stall itself was the wait
            delay = self.options.backoff().delay(failures, error.retry_after)
            self._set(DownloadState.CONNECTING, f"{error}; retry {failures} in {delay:.1f} s")
            await asyncio.sleep(delay)

    def _request_headers(self) -> dict[str, str]:
        return {**self.headers, "Accept-Encoding": "identity"}

    async def _stream(self, session: aiohttp.ClientSession, chunk: Chunk) -> None:
        headers = self._request_headers()
        whole_file = chunk.pos == 0 and (chunk.end is None or chunk.end == self.total)
        if not whole_file:
            last = "" if chunk.end is None else str(chunk.end - 1)
            headers["Range"] = f"bytes={chunk.pos}-{last}"
            if self._etag and not self.expected_sha256 and not self._etag.startswith("W/"):
                headers["If-Range"] = self._etag
        if self.state not in (DownloadState.DOWNLOADING, DownloadState.STALLED):
            self._set(DownloadState.CONNECTING, self.message if self.state == DownloadState.CONNECTING else None)
        self.requests += 1
        stall = self.options.stall_timeout_s
        try:
            # One deadline for connect, headers and body, pushed back as bytes arrive: cheaper
            # than aiohttp's sock_read, which re-arms a timer for every socket read.
            async with asyncio.timeout(stall) as deadline:
                async with session.get(self.url, headers=headers) as resp:
                    self._check_status(resp, chunk, whole_file)
                    if resp.status == 416:
                        return
                    await self._receive(resp, chunk, deadline)
        except TimeoutError:
            if deadline.expired():
                raise _Retryable(f"no data for {stall:g} s", stalled=True) from None
            raise

    def _check_status(self, resp: aiohttp.ClientResponse, chunk: Chunk, whole_file: bool) -> None:
        status = resp.status
        if status == 416:
            _, _, total = _content_range(resp.headers.get("Content-Range"))
            known = self.total if self.total is not None else total
            if len(self._chunks) == 1 and known is not None and chunk.pos == known and total in (None, known):
                chunk.end = known  # the part was already complete
                self.total = known
                return
            raise _RestartFromZero(f"the server refused the range ({status})")
        if status in (408, 425, 429) or status >= 500:
            raise _Retryable(f"the server answered {status}", retry_after=retry_after_s(resp.headers))
        if status in (401, 403):
            raise DownloadFailed(f"{self.dest.name}: access denied ({status}); for gated or private hub repos set HF_TOKEN",
                                 status=status)
        if status == 404:
            raise DownloadFailed(f"{self.dest.name}: not found at {self.url} (404)", status=404)
        if status not in (200, 206):
            raise DownloadFailed(f"{self.dest.name}: the server answered {status}")
        if status == 200:
            if not whole_file:
                raise _RestartFromZero("the server does not resume (it ignores Range)")
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            start, _, total = _content_range(resp.headers.get("Content-Range"))
            if start != chunk.pos:
                raise _RestartFromZero(f"the server sent the range from {start}, not {chunk.pos}")
        if total is not None:
            if self.total is None:
                self.total = total
                check_free_space(self.dest.parent, total - self.downloaded, self.options.free_space_margin)
                for c in self._chunks:
                    if c.end is None:
                        c.end = total
            elif total != self.total:
                raise DownloadFailed(f"{self.dest.name}: the server has {total} bytes, expected {self.total}")
        etag = resp.headers.get("ETag")
        if etag and not self.expected_sha256:
            if self._etag and etag != self._etag and not whole_file:
                raise _RestartFromZero("the file changed on the server")
            self._etag = etag

    async def _receive(self, resp: aiohttp.ClientResponse, chunk: Chunk, deadline: asyncio.Timeout) -> None:
        loop = asyncio.get_running_loop()
        stall = self.options.stall_timeout_s
        rearmed = time.monotonic()
        fd = self._open_part()
        block = self.options.write_block
        pieces: list[bytes] = []
        pending = 0
        write_at = chunk.pos
        inflight: tuple[asyncio.Future, int, int, list[bytes]] | None = None
        last_submit = time.monotonic()

        async def commit(item: tuple[asyncio.Future, int, int, list[bytes]]) -> None:
            future, offset, size, written = item
            await future
            chunk.pos = offset + size
            self.downloaded += size
            self.fetched += size
            self._state_dirty = True
            if self._hasher is not None:
                prefix = contiguous_prefix(self._chunks)
                if offset < prefix:  # this block extends the hashable prefix: hash it from memory
                    self._hasher.offer(offset, written, size)
                self._hasher.advance(prefix)

        def submit() -> tuple[asyncio.Future, int, int, list[bytes]]:
            nonlocal pieces, pending, write_at
            item = (loop.run_in_executor(self._pool, _write_all, fd, pieces, write_at), write_at, pending, pieces)
            write_at += pending
            pieces, pending = [], 0
            return item

        try:
            async for data, _ in resp.content.iter_chunks():
                if not data:
                    continue
                if self.state != DownloadState.DOWNLOADING:
                    self._set(DownloadState.DOWNLOADING)
                now = self.last_byte_at = time.monotonic()
                if now - rearmed >= 0.25:
                    deadline.reschedule(loop.time() + stall)
                    rearmed = now
                if chunk.end is not None and write_at + pending + len(data) > chunk.end:
                    data = data[: max(0, chunk.end - write_at - pending)]
                pieces.append(data)
                pending += len(data)
                # Write a full block, or whatever a slow connection brought in half a second,
                # so progress and the saved state keep moving.
                if pending >= block or len(pieces) >= 512 or now - last_submit >= 0.5:
                    # One write in flight per connection, overlapping the reads: the part then
                    # grows strictly in order, so its length is a true resume point.
                    last_submit = now
                    if inflight is not None:
                        await commit(inflight)
                    inflight = submit()
                if chunk.end is not None and write_at + pending >= chunk.end:
                    break
        finally:
            # Keep every byte received, also when the connection broke or we were paused.
            if inflight is not None:
                await commit(inflight)
                inflight = None
            if pending:
                await commit(submit())

    async def _finish(self) -> FileResult:
        total = self.total if self.total is not None else contiguous_prefix(self._chunks)
        if not self.part.exists():
            _create_empty(self.part)  # an empty file
        self._set(DownloadState.VERIFYING)
        digest: str | None = None
        if self._hasher is not None:
            digest = await self._hasher.finish(total)
        await self._drain_io(reopen=False)
        actual = self.part.stat().st_size
        if actual != total:
            self._discard_part()
            raise DownloadFailed(f"{self.dest.name}: the file has {actual} bytes, expected {total}; removed, run again")
        if digest is not None and self.expected_sha256 and digest != self.expected_sha256:
            self._discard_part()
            raise ChecksumMismatch(
                f"{self.dest.name}: sha256 mismatch (expected {self.expected_sha256}, got {digest}); "
                "the download was removed and not registered, run the command again to fetch it anew")
        os.replace(self.part, self.dest)
        self._chunks = []
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        verified = digest is not None and self.expected_sha256 is not None
        return FileResult(self.dest, total, digest or self.expected_sha256, verified, fetched=self.fetched)
