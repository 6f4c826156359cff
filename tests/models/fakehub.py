"""A fake Hugging Face hub on 127.0.0.1 for the model-cache tests.

It speaks the parts of the hub API huggingface_hub uses here (model info with file metadata,
model search) and serves files under /<repo>/resolve/<rev>/<path> and /files/<name> with Range
support, plus injectable faults: error statuses, a connection that drops after N bytes, a stall,
a throttle. It runs on its own event loop in a thread, so synchronous code, async tests and
`abi` subprocesses can all use it; every request is logged with the bytes it sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Fault:
    """What the next matching GET does instead of (or before) serving normally."""

    status: int | None = None         # answer this status
    drop_after: int | None = None     # send this many bytes, then close the connection
    stall_after: int | None = None    # send this many bytes, then go silent
    stall_s: float = 30.0
    path: str | None = None           # only for requests whose path contains this


@dataclass
class RequestLog:
    method: str
    path: str
    range: str | None
    status: int
    sent: int = 0
    start: int | None = None
    authorization: str | None = None


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    corrupt: dict[str, bytes] = field(default_factory=dict)  # served instead of the listed bytes
    downloads: int = 0
    likes: int = 0
    updated: str = "2025-01-01T00:00:00.000Z"


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    plain_files: dict[str, bytes] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    log: list[RequestLog] = field(default_factory=list)
    throttle_bps: float | None = None
    head_allowed: bool = True
    piece: int = 64 * 1024
    url: str = ""
    on_request: Callable[[web.Request], None] | None = None
    active: int = 0          # byte-serving responses in progress
    max_active: int = 0

    def __post_init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeHub:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-hub", daemon=True)
        self._thread.start()
        assert ready.wait(10), "fake hub did not start"
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/models", self._search)
        app.router.add_get("/api/models/{owner}/{name}", self._info)
        app.router.add_get("/api/models/{owner}/{name}/revision/{rev}", self._info)
        app.router.add_route("*", "/files/{name}", self._plain)
        app.router.add_route("*", "/{owner}/{name}/resolve/{rev}/{path:.+}", self._resolve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)  # type: ignore[union-attr]
        try:
            future.result(10)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)

    # -- helpers for tests -----------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes], **kwargs: Any) -> Repo:
        repo = Repo(files=dict(files), **kwargs)
        self.repos[repo_id] = repo
        return repo

    def file_requests(self, contains: str = "") -> list[RequestLog]:
        with self._lock:
            return [r for r in self.log if r.method == "GET" and ("/resolve/" in r.path or r.path.startswith("/files/"))
                    and contains in r.path]

    def bytes_sent(self, contains: str = "") -> int:
        return sum(r.sent for r in self.file_requests(contains))

    # -- API ---------------------------------------------------------------------------------
    async def _search(self, request: web.Request) -> web.Response:
        query = (request.query.get("search") or "").lower()
        filters = request.query.getall("filter", [])
        sort = request.query.get("sort")
        limit = int(request.query.get("limit", "1000"))
        found = [(rid, r) for rid, r in self.repos.items() if query in rid.lower()
                 and (not filters or "gguf" in filters)]
        key = {"downloads": lambda x: x[1].downloads, "likes": lambda x: x[1].likes,
               "lastModified": lambda x: x[1].updated}.get(sort or "")
        if key:
            found.sort(key=key, reverse=True)
        body = [{"id": rid, "modelId": rid, "downloads": r.downloads, "likes": r.likes,
                 "lastModified": r.updated, "tags": ["gguf"]} for rid, r in found[:limit]]
        self._record(request, 200)
        return web.json_response(body)

    async def _info(self, request: web.Request) -> web.Response:
        repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
        repo = self.repos.get(repo_id)
        if repo is None:
            self._record(request, 404)
            return web.json_response({"error": "Repository not found"}, status=404,
                                     headers={"X-Error-Code": "RepoNotFound"})
        siblings = []
        for path, data in repo.files.items():
            entry: dict[str, Any] = {"rfilename": path, "size": len(data),
                                     "blobId": hashlib.sha1(data).hexdigest()}
            if path.endswith(".gguf"):
                entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(entry)
        self._record(request, 200)
        return web.json_response({"id": repo_id, "modelId": repo_id, "sha": repo.sha, "siblings": siblings,
                                  "downloads": repo.downloads, "likes": repo.likes, "lastModified": repo.updated,
                                  "tags": ["gguf"], "private": False})

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
        repo = self.repos.get(repo_id)
        data = repo.files.get(request.match_info["path"]) if repo else None
        if data is None:
            self._record(request, 404)
            return web.json_response({"error": "Entry not found"}, status=404, headers={"X-Error-Code": "EntryNotFound"})
        sha = hashlib.sha256(data).hexdigest()
        data = repo.corrupt.get(request.match_info["path"], data)
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"',
                   "X-Linked-Size": str(len(data))}
        return await self._serve(request, data, headers)

    async def _plain(self, request: web.Request) -> web.StreamResponse:
        data = self.plain_files.get(request.match_info["name"])
        if data is None:
            self._record(request, 404)
            return web.Response(status=404)
        if request.method == "HEAD" and not self.head_allowed:
            self._record(request, 405)
            return web.Response(status=405)
        return await self._serve(request, data, {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    # -- byte serving ----------------------------------------------------------------------
    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self.faults):
                if fault.path is None or fault.path in path:
                    return self.faults.pop(i)
        return None

    def _record(self, request: web.Request, status: int, start: int | None = None) -> RequestLog:
        entry = RequestLog(request.method, request.path, request.headers.get("Range"), status, 0, start,
                           request.headers.get("Authorization"))
        with self._lock:
            self.log.append(entry)
        return entry

    async def _serve(self, request: web.Request, data: bytes, headers: dict[str, str]) -> web.StreamResponse:
        if self.on_request:
            self.on_request(request)
        size = len(data)
        fault = self._take_fault(request.path) if request.method == "GET" else None
        if fault and fault.status:
            self._record(request, fault.status)
            return web.Response(status=fault.status, text="injected failure")
        start, end = 0, size - 1
        status = 200
        header = request.headers.get("Range")
        if header:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", header.strip())
            if not match:
                self._record(request, 416)
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            if start >= size or start > end:
                self._record(request, 416)
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Accept-Ranges"] = "bytes"
        headers["Content-Length"] = str(end - start + 1)
        entry = self._record(request, status, start)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        position = start
        limit = end + 1
        cut = None
        if fault and fault.drop_after is not None:
            cut = ("drop", start + fault.drop_after)
        elif fault and fault.stall_after is not None:
            cut = ("stall", start + fault.stall_after)
        loop = asyncio.get_running_loop()
        began = loop.time()
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return await self._send(request, response, data, entry, position, limit, cut, fault, began)
        finally:
            self.active -= 1

    async def _send(self, request: web.Request, response: web.StreamResponse, data: bytes, entry: RequestLog,
                    position: int, limit: int, cut: tuple[str, int] | None, fault: Fault | None,
                    began: float) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        start = position
        while position < limit:
            stop = min(limit, position + self.piece)
            if cut is not None:
                stop = min(stop, cut[1])
            if stop > position:
                try:
                    await response.write(data[position:stop])
                except ConnectionError:  # the client went away (pause, cancel, stall)
                    return response
                entry.sent += stop - position
                position = stop
            if cut is not None and position >= cut[1]:
                if cut[0] == "drop":
                    await asyncio.sleep(0.3)  # let the client read everything sent so far
                    assert request.transport is not None
                    request.transport.close()
                    return response
                await asyncio.sleep(fault.stall_s if fault else 30)
                return response
            if self.throttle_bps:
                ahead = (position - start) / self.throttle_bps - (loop.time() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await response.write_eof()
        return response
