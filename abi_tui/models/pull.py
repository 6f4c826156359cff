"""Model downloads: resolve a spec, fetch its files, register them with a sidecar.

`start_download()` returns a DownloadHandle (pause, resume, cancel, progress events) that the
server and the CLI share; a second request for the same spec in the same process joins the
running download, and another process waits on the files' locks and then finds them done.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from abi_tui.models import cache, hub
from abi_tui.models.download import DownloadOptions, FileDownload, FileResult, check_free_space
from abi_tui.models.errors import (
    AbiError,
    DownloadCancelled,
    DownloadFailed,
    InvalidRequest,
    ModelNotFound,
)
from abi_tui.models.filelock import FileLock
from abi_tui.models.gguf_info import read_summary
from abi_tui.models.progress import DownloadProgress, DownloadState, RateMeter
from abi_tui.models.record import CachedModel
from abi_tui.models.spec import parse_spec

ProgressListener = Callable[["DownloadHandle", DownloadProgress], None]
# Process-wide listeners (the server forwards every download's events to /api/events).
progress_listeners: list[ProgressListener] = []
_active: dict[tuple[int, str], DownloadHandle] = {}


class DownloadHandle:
    """One model download: its files in turn, progress events, pause/resume/cancel."""

    def __init__(self, settings: Any, spec: str, *, quant: str | None = None, sha256: str | None = None,
                 verify: bool = True, options: DownloadOptions | None = None,
                 endpoint: str | None = None, token: str | None = None) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.settings = settings
        self.spec_text = spec
        self.quant = quant
        self.sha256 = sha256.lower() if sha256 else None
        self.options = options or DownloadOptions()
        self.options.verify = verify and self.options.verify
        self.endpoint = endpoint
        self.token = token
        self.progress = DownloadProgress(spec=spec, name=spec)
        self.resolved: hub.ResolvedModel | None = None
        self.model: CachedModel | None = None
        self._meter = RateMeter()
        self._queues: list[asyncio.Queue[DownloadProgress]] = []
        self._callbacks: list[Callable[[DownloadProgress], None]] = []
        self._task: asyncio.Task | None = None
        self._attempt_task: asyncio.Task | None = None
        self._current: FileDownload | None = None
        self._done_bytes = 0
        self._partial_bytes = 0  # of the file being fetched, kept while paused
        self._fetched_before = 0
        self._paused = False
        self._cancelled = False
        self._resume_event = asyncio.Event()
        self._dests: list[Path] = []

    # -- control ---------------------------------------------------------------------------
    def start(self) -> DownloadHandle:
        if self._task is None:
            _active.setdefault((id(asyncio.get_running_loop()), self._key()), self)
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"abi-download-{self.id}")
            # Followers may all have left: the outcome is in the events, never an unread-exception warning.
            self._task.add_done_callback(lambda task: task.cancelled() or task.exception())
        return self

    def pause(self) -> None:
        if self._attempt_task is not None and not self._attempt_task.done() and not self._paused:
            self._paused = True
            self._attempt_task.cancel()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._resume_event.set()

    def cancel(self) -> None:
        self._cancelled = True
        self._resume_event.set()
        if self._attempt_task is not None and not self._attempt_task.done():
            self._attempt_task.cancel()

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def wait(self) -> CachedModel:
        """The registered model; raises the download's error. Cancelling the waiter does not
        cancel the download (other clients may be following it)."""
        self.start()
        assert self._task is not None
        return await asyncio.shield(self._task)

    async def outcome(self) -> tuple[CachedModel | None, BaseException | None]:
        """(model, None) or (None, error) once the download is over; never raises."""
        self.start()
        assert self._task is not None
        await asyncio.wait([self._task])
        if self._task.cancelled():
            return None, DownloadCancelled(f"download of {self.spec_text} cancelled")
        error = self._task.exception()
        return (None, error) if error is not None else (self._task.result(), None)

    def add_callback(self, callback: Callable[[DownloadProgress], None]) -> None:
        self._callbacks.append(callback)

    async def events(self) -> AsyncIterator[DownloadProgress]:
        """Progress events from now until a terminal state (done, failed, cancelled)."""
        queue: asyncio.Queue[DownloadProgress] = asyncio.Queue(maxsize=512)
        self._queues.append(queue)
        try:
            yield self.progress
            if self.progress.state.terminal:
                return
            while True:
                event = await queue.get()
                yield event
                if event.state.terminal:
                    return
        finally:
            self._queues.remove(queue)

    # -- progress --------------------------------------------------------------------------
    def _emit(self, state: DownloadState | None = None, **changes: Any) -> None:
        current = self._current
        downloaded = self._done_bytes + (current.downloaded if current else self._partial_bytes)
        fetched = self._fetched_before + (current.fetched if current else 0)
        self._meter.add(fetched)
        total = self.resolved.total_size if self.resolved else None
        if total is None and current is not None and current.total is not None and len(self._dests) == 1:
            total = current.total
        event = DownloadProgress(
            state=state or self.progress.state, downloaded=downloaded, total=total,
            rate_bps=self._meter.rate(), eta_s=self._meter.eta(downloaded, total),
            name=self.progress.name, spec=self.spec_text, file=self.progress.file,
            files_done=self.progress.files_done, files_total=self.progress.files_total,
            message=changes.pop("message", self.progress.message if state is None else None),
        )
        for key, value in changes.items():
            setattr(event, key, value)
        if event.state.terminal or event.state == DownloadState.PAUSED:
            event.rate_bps, event.eta_s = 0.0, None
        self.progress = event
        for queue in self._queues:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)
        for callback in [*self._callbacks]:
            callback(event)
        for listener in [*progress_listeners]:
            with contextlib.suppress(Exception):
                listener(self, event)

    def _on_file_state(self, download: FileDownload) -> None:
        self._emit(download.state, message=download.message)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            if self.progress.state in (DownloadState.DOWNLOADING, DownloadState.STALLED, DownloadState.VERIFYING,
                                       DownloadState.CONNECTING):
                self._emit()

    # -- the work --------------------------------------------------------------------------
    async def _run(self) -> CachedModel:
        key = (id(asyncio.get_running_loop()), self._key())
        ticker = asyncio.create_task(self._ticker())
        try:
            while True:
                self._attempt_task = asyncio.create_task(self._attempt())
                try:
                    self.model = await self._attempt_task
                except asyncio.CancelledError:
                    if self._cancelled:
                        await self._remove_parts()
                        self._emit(DownloadState.CANCELLED, message="cancelled; partial files removed")
                        raise DownloadCancelled(f"download of {self.spec_text} cancelled") from None
                    if not self._paused:
                        raise
                    self._emit(DownloadState.PAUSED, message="paused; resume continues from here")
                    self._resume_event.clear()
                    if self._paused:
                        await self._resume_event.wait()
                    if self._cancelled:
                        await self._remove_parts()
                        self._emit(DownloadState.CANCELLED, message="cancelled; partial files removed")
                        raise DownloadCancelled(f"download of {self.spec_text} cancelled") from None
                    self._meter.reset()
                    continue
                self._emit(DownloadState.DONE, path=str(self.model.path), message=None,
                           downloaded=self.model.size, total=self.model.size)
                return self.model
        except (AbiError, asyncio.CancelledError) as exc:
            if not isinstance(exc, DownloadCancelled):
                self._fail(exc)
            raise
        except Exception as exc:  # a bug or an OS error: still a clear event for the client
            self._fail(exc)
            raise DownloadFailed(f"download of {self.spec_text} failed: {exc}") from exc
        finally:
            ticker.cancel()
            if _active.get(key) is self:
                del _active[key]

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            self._emit(DownloadState.CANCELLED, message="interrupted; run it again to resume")
            return
        message = exc.message if isinstance(exc, AbiError) else str(exc) or type(exc).__name__
        code = exc.code if isinstance(exc, AbiError) else "download_failed"
        self._emit(DownloadState.FAILED, error=message, error_code=code, message=None)

    def _key(self) -> str:
        return f"{self.spec_text.strip().lower()}|{(self.quant or '').lower()}"

    async def _resolve(self) -> hub.ResolvedModel:
        spec = parse_spec(self.spec_text, endpoint=self.endpoint).with_quant(self.quant)
        if spec.kind not in ("hub", "url"):
            raise InvalidRequest(f"{self.spec_text!r} is not something to download: use owner/repo:QUANT, "
                                 "owner/repo/file.gguf, hf://... or an https:// URL", param="model")
        self._emit(DownloadState.CONNECTING, message="resolving")
        resolved = await asyncio.to_thread(hub.resolve_remote, spec, endpoint=self.endpoint, token=self.token)
        if self.sha256:
            if len(resolved.files) != 1:
                raise InvalidRequest("--sha256 applies to a single file; this model has several", param="sha256")
            resolved.files[0].sha256 = self.sha256
        return resolved

    def _headers(self, url: str) -> dict[str, str]:
        from urllib.parse import urlsplit

        endpoint = self.endpoint or hub.hub_endpoint()
        same_host = urlsplit(url).netloc.lower() == urlsplit(endpoint).netloc.lower()
        # The token goes to the hub only (aiohttp drops it again on a redirect to a CDN).
        return hub.hub_headers(self.token) if same_host else {"User-Agent": "abi-tui"}

    async def _attempt(self) -> CachedModel:
        if self.resolved is None and hub.is_offline():
            # Offline, a model already in the cache is still "downloaded"; otherwise _resolve
            # explains that the hub cannot be reached.
            with contextlib.suppress(ModelNotFound):
                return await asyncio.to_thread(cache.find_model, self.settings, self.spec_text)
        if self.resolved is None:
            self.resolved = await self._resolve()
        resolved = self.resolved
        models_dir = self.settings.models_dir
        self._dests = [cache.destination(models_dir, repo=resolved.repo, path_in_repo=f.path, url=f.url)
                       for f in resolved.files]
        self.progress.name = resolved.name
        self.progress.files_total = len(self._dests)
        self._dests[0].parent.mkdir(parents=True, exist_ok=True)
        locks = [FileLock(d.with_name(d.name + ".lock")) for d in self._dests]
        try:
            for lock, dest in zip(locks, self._dests, strict=True):
                dest.parent.mkdir(parents=True, exist_ok=True)
                await lock.acquire(lambda: self._emit(DownloadState.QUEUED, message="waiting for another download of this model"))
            return await self._fetch_all(resolved)
        finally:
            for lock in locks:
                lock.release()

    async def _fetch_all(self, resolved: hub.ResolvedModel) -> CachedModel:
        sidecar = cache.read_sidecar(self._dests[0]) or {}
        known = {m.get("path"): m for m in sidecar.get("files", []) if isinstance(m, dict)}

        def reuse(path: Path) -> FileResult | None:
            meta = known.get(path.name)
            remote = resolved.files[self._dests.index(path)]
            if not meta or not path.exists() or path.stat().st_size != meta.get("size"):
                return None
            if remote.sha256 and meta.get("sha256") != remote.sha256.lower():
                return None
            if self.options.verify and remote.sha256 and not meta.get("verified"):
                return None
            return FileResult(path, meta["size"], meta.get("sha256"), bool(meta.get("verified")), reused=True)

        # Space for the whole model, checked before the first byte of the first file.
        missing = 0
        for dest, remote in zip(self._dests, resolved.files, strict=True):
            if remote.size is None or (dest.exists() and reuse(dest)):
                continue
            part = dest.with_name(dest.name + ".part")
            missing += max(0, remote.size - (part.stat().st_size if part.exists() else 0))
        if missing:
            check_free_space(self._dests[0].parent, missing, self.options.free_space_margin)

        # The GGUF reader (numpy) takes a moment to import: do it while the bytes flow.
        asyncio.get_running_loop().run_in_executor(None, importlib.import_module, "gguf")
        results: list[FileResult] = []
        self._done_bytes = 0
        for index, (dest, remote) in enumerate(zip(self._dests, resolved.files, strict=True)):
            self.progress.file = remote.path
            self.progress.files_done = index
            download = FileDownload(remote.url, dest, size=remote.size, sha256=remote.sha256,
                                    headers=self._headers(remote.url), options=self.options,
                                    on_state=self._on_file_state, reuse=reuse, use_lock=False)
            self._current = download
            try:
                result = await download.run()
            finally:
                self._fetched_before += download.fetched
                self._partial_bytes = download.downloaded
                self._current = None
            self._partial_bytes = 0
            self._done_bytes += result.size
            results.append(result)
        self.progress.files_done = len(results)
        self._emit(DownloadState.VERIFYING, message="reading the GGUF header")
        return await self._register(resolved, results)

    async def _register(self, resolved: hub.ResolvedModel, results: list[FileResult]) -> CachedModel:
        paths = [r.path for r in results]
        if all(r.reused for r in results) and cache.read_sidecar(paths[0]):
            return await self._listed(resolved, paths[0])  # already registered: keep its record
        try:
            summary = await asyncio.to_thread(read_summary, paths)
        except AbiError as exc:
            if not all(r.verified for r in results):
                for path in paths:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                raise DownloadFailed(f"{resolved.name}: the download is not a GGUF model ({exc.message}); removed") from None
            summary = None  # the hub vouches for these bytes; list the file even if we cannot read it
        side = {
            "name": resolved.name,
            "source": resolved.spec,
            "url": resolved.files[0].url,
            "repo": resolved.repo,
            "revision": resolved.revision,
            "quant": resolved.quant or (summary.quantization if summary else None),
            "size": sum(r.size for r in results),
            "sha256": results[0].sha256,
            "verified": all(r.verified for r in results),
            "downloaded_at": cache.now_iso(),
            "files": [{"path": r.path.name, "url": f.url, "size": r.size, "sha256": r.sha256, "verified": r.verified}
                      for r, f in zip(results, resolved.files, strict=True)],
            "gguf": summary.to_dict() if summary else None,
        }
        await asyncio.to_thread(cache.write_sidecar, paths[0], side)
        return await self._listed(resolved, paths[0])

    async def _listed(self, resolved: hub.ResolvedModel, path: Path) -> CachedModel:
        models = await asyncio.to_thread(cache.list_models, self.settings, include_stores=False, summaries=False)
        found = next((m for m in models if m.path == path), None)
        if found is None:
            raise ModelNotFound(f"{resolved.name} was downloaded to {path} but cannot be listed")
        return found

    async def _remove_parts(self) -> None:
        for dest in self._dests:
            for leftover in (dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()


def start_download(settings: Any, spec: str, **kwargs: Any) -> DownloadHandle:
    """Start (or join) the download of `spec` on the running event loop."""
    handle = DownloadHandle(settings, spec, **kwargs)
    existing = _active.get((id(asyncio.get_running_loop()), handle._key()))
    if existing is not None and not existing.done:
        return existing
    return handle.start()


def active_downloads() -> list[DownloadHandle]:
    return [h for h in _active.values() if not h.done]


def find_download(download_id: str) -> DownloadHandle | None:
    return next((h for h in _active.values() if h.id == download_id), None)


async def pull_model(settings: Any, spec: str, *, on_progress: Callable[[DownloadProgress], None] | None = None,
                     **kwargs: Any) -> CachedModel:
    """Download `spec` into the cache and return the registered model."""
    handle = start_download(settings, spec, **kwargs)
    if on_progress is not None:
        handle.add_callback(on_progress)
        on_progress(handle.progress)
    return await handle.wait()
