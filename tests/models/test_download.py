"""The download engine under faults, against the fake hub on 127.0.0.1.

Each test asserts what the server actually sent (its request log), so "resumed" means the
second request started at the byte where the first one stopped.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from abi_tui.models import cache, download
from abi_tui.models.download import DownloadOptions
from abi_tui.models.errors import (
    ChecksumMismatch,
    DownloadCancelled,
    InsufficientSpace,
    OfflineMode,
)
from abi_tui.models.progress import DownloadState
from abi_tui.models.pull import pull_model, start_download

from .conftest import sha256
from .fakehub import Fault

SPEC = "acme/big-GGUF:Q4_K_M"


def fast(**kwargs) -> DownloadOptions:
    """Short backoff so retries do not slow the tests; the logic is the same."""
    return DownloadOptions(**{"backoff_base_s": 0.02, "backoff_max_s": 0.2, **kwargs})


@pytest.fixture
def data(hub, gguf_bytes) -> bytes:
    content = gguf_bytes(11, big=True)
    hub.add_repo("acme/big-GGUF", {"big-Q4_K_M.gguf": content, "big-Q8_0.gguf": gguf_bytes(12)})
    return content


async def until(condition, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def assert_cached(model, data: bytes, sources: tuple[str, ...] = (SPEC,)) -> None:
    assert model.path.read_bytes() == data
    assert model.verified and model.sha256 == [sha256(data)]
    side = cache.read_sidecar(model.path)
    assert side["sha256"] == sha256(data) and side["verified"] is True and side["size"] == len(data)
    assert side["source"] in sources and side["repo"] == "acme/big-GGUF" and side["revision"]
    assert side["gguf"]["architecture"] == "llama" and side["gguf"]["parameters"] > 0
    assert not list(model.path.parent.glob("*.part*")) and not list(model.path.parent.glob("*.lock"))


async def test_download_registers_the_model_with_a_sidecar(settings, hub, data, monkeypatch) -> None:
    events = []
    model = await pull_model(settings, SPEC, on_progress=events.append, options=fast())
    assert_cached(model, data)
    assert model.path == settings.models_dir / "acme" / "big-GGUF" / "big-Q4_K_M.gguf"
    seen = [e.state for e in events]
    assert seen[-1] == DownloadState.DONE and DownloadState.VERIFYING in seen
    assert events[-1].downloaded == events[-1].total == len(data)
    assert hub.bytes_sent() == len(data)
    # A second pull finds it complete and sends nothing; offline, the cache still answers.
    again = await pull_model(settings, SPEC, options=fast())
    assert again.path == model.path and hub.bytes_sent() == len(data)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    requests = len(hub.log)
    assert (await pull_model(settings, SPEC, options=fast())).path == model.path
    with pytest.raises(OfflineMode):
        await pull_model(settings, "acme/big-GGUF:Q8_0", options=fast())
    assert len(hub.log) == requests


async def test_dropped_connection_resumes_from_the_byte_offset(settings, hub, data) -> None:
    hub.faults.append(Fault(drop_after=1_500_000))
    model = await pull_model(settings, SPEC, options=fast())
    requests = hub.file_requests()
    assert [r.sent for r in requests] == [1_500_000, len(data) - 1_500_000]
    assert requests[1].range == f"bytes=1500000-{len(data) - 1}"
    assert_cached(model, data)


async def test_server_errors_are_retried_with_backoff(settings, hub, data) -> None:
    hub.faults += [Fault(status=500), Fault(status=500)]
    events = []
    model = await pull_model(settings, SPEC, on_progress=events.append, options=fast())
    assert [r.status for r in hub.file_requests()] == [500, 500, 200]
    assert any(e.message and "retry 2" in e.message for e in events)
    assert_cached(model, data)


async def test_a_stall_is_reported_then_reconnected(settings, hub, data) -> None:
    hub.faults.append(Fault(stall_after=1_000_000, stall_s=3.0))
    events = []
    model = await pull_model(settings, SPEC, on_progress=events.append, options=fast(stall_timeout_s=1.0))
    seen = [e.state for e in events]
    assert DownloadState.STALLED in seen
    assert seen.index(DownloadState.STALLED) < len(seen) - seen[::-1].index(DownloadState.DOWNLOADING) - 1
    requests = hub.file_requests()
    assert requests[0].sent == 1_000_000 and requests[1].start == 1_000_000
    assert sum(r.sent for r in requests) == len(data)  # nothing fetched twice
    assert_cached(model, data)


async def test_wrong_sha256_removes_the_file_and_registers_nothing(settings, hub, data) -> None:
    repo = hub.repos["acme/big-GGUF"]
    repo.corrupt["big-Q4_K_M.gguf"] = data[:-1] + bytes([data[-1] ^ 0xFF])
    with pytest.raises(ChecksumMismatch, match="sha256 mismatch.*removed and not registered"):
        await pull_model(settings, SPEC, options=fast())
    folder = settings.models_dir / "acme" / "big-GGUF"
    assert not list(folder.glob("*")) if folder.exists() else True
    assert cache.list_models(settings) == []
    # --sha256 on a URL works the same way.
    hub.plain_files["m.gguf"] = data
    with pytest.raises(ChecksumMismatch):
        await pull_model(settings, f"{hub.url}/files/m.gguf", sha256="0" * 64, options=fast())
    assert cache.list_models(settings) == []


async def test_416_on_a_complete_part_finishes_without_refetching(settings, hub, data) -> None:
    hub.plain_files["whole.gguf"] = data
    hub.head_allowed = False  # so the size is unknown and the part is only continued by Range
    url = f"{hub.url}/files/whole.gguf"
    dest = cache.destination(settings.models_dir, repo=None, path_in_repo="whole.gguf", url=url)
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(data)
    expected = sha256(data)
    model = await pull_model(settings, url, sha256=expected, options=fast())
    gets = hub.file_requests()
    assert [(r.status, r.range, r.sent) for r in gets] == [(416, f"bytes={len(data)}-", 0)]
    assert model.path == dest and model.path.read_bytes() == data and model.verified


async def test_not_enough_space_fails_before_any_byte(settings, hub, data, monkeypatch) -> None:
    monkeypatch.setattr(download, "free_bytes", lambda path: 1_000_000)
    with pytest.raises(InsufficientSpace, match="not enough free space"):
        await pull_model(settings, SPEC, options=fast())
    assert hub.file_requests() == []
    folder = settings.models_dir / "acme" / "big-GGUF"
    assert not any(folder.rglob("*.part")) if folder.exists() else True


async def test_several_connections_split_a_large_file(settings, hub, data) -> None:
    hub.throttle_bps = 8_000_000
    options = fast(connections=3, min_part_size=512 * 1024, max_part_size=1024 * 1024)
    model = await pull_model(settings, SPEC, options=options)
    requests = hub.file_requests()
    assert len(requests) >= 5 and all(r.status == 206 for r in requests)
    assert hub.max_active >= 2
    assert sum(r.sent for r in requests) == len(data)
    assert_cached(model, data)


async def test_concurrent_downloads_of_one_file_join_or_wait(settings, hub, data) -> None:
    hub.throttle_bps = 6_000_000
    first = start_download(settings, SPEC, options=fast())
    joined = start_download(settings, SPEC, options=fast())
    other_spelling = start_download(settings, "acme/big-GGUF/big-Q4_K_M.gguf", options=fast())
    waited = []
    for handle in (first, other_spelling):
        handle.add_callback(lambda e: waited.append(e))
    a, b, c = await asyncio.gather(first.wait(), joined.wait(), other_spelling.wait())
    assert joined is first
    assert a.path == b.path == c.path
    # The two spellings resolve to one file: whichever locked it second waited for the other.
    assert any(e.state == DownloadState.QUEUED and "waiting" in (e.message or "") for e in waited)
    assert hub.bytes_sent() == len(data)  # one transfer for all three
    assert_cached(a, data, sources=(SPEC, "acme/big-GGUF/big-Q4_K_M.gguf"))  # whoever locked it first


async def test_pause_resume_and_cancel(settings, hub, data) -> None:
    hub.throttle_bps = 3_000_000
    handle = start_download(settings, SPEC, options=fast())
    await until(lambda: handle.progress.downloaded > 1_000_000)
    handle.pause()
    await until(lambda: handle.progress.state == DownloadState.PAUSED)
    kept = handle.progress.downloaded
    part = settings.models_dir / "acme" / "big-GGUF" / "big-Q4_K_M.gguf.part"
    assert part.stat().st_size >= kept
    assert json.loads(part.with_name(part.name + ".json").read_text())["chunks"][0][2] == kept
    handle.resume()
    model = await handle.wait()
    requests = hub.file_requests()
    assert requests[-1].start == kept and requests[-1].sent == len(data) - kept
    assert_cached(model, data)

    hub.throttle_bps = 100_000
    cancelled = start_download(settings, "acme/big-GGUF:Q8_0", options=fast())
    await until(lambda: hub.bytes_sent("Q8_0") > 0)
    cancelled.cancel()
    with pytest.raises(DownloadCancelled):
        await cancelled.wait()
    assert cancelled.progress.state == DownloadState.CANCELLED
    assert not list((settings.models_dir / "acme" / "big-GGUF").glob("big-Q8_0*"))


async def test_split_model_is_one_cached_model(settings, hub, gguf_bytes) -> None:
    shards = {"Q8_0/t-Q8_0-00001-of-00002.gguf": gguf_bytes(4), "Q8_0/t-Q8_0-00002-of-00002.gguf": gguf_bytes(5)}
    hub.add_repo("acme/split", shards)
    model = await pull_model(settings, "acme/split:Q8_0", options=fast())
    assert [p.name for p in model.files] == ["t-Q8_0-00001-of-00002.gguf", "t-Q8_0-00002-of-00002.gguf"]
    assert model.name == "t-Q8_0" and model.size == sum(len(b) for b in shards.values())
    listed = cache.list_models(settings)
    assert [(m.name, len(m.files)) for m in listed] == [("t-Q8_0", 2)]
    side = cache.read_sidecar(model.path)
    assert [f["sha256"] for f in side["files"]] == [sha256(b) for b in shards.values()]
    assert side["gguf"]["split_count"] == 2


async def test_every_spec_form_resolves_to_the_cached_file(settings, hub, data) -> None:
    from abi_tui.errors import ModelNotFound
    from abi_tui.models import resolve_local_model

    model = await pull_model(settings, SPEC, options=fast())
    forms = [SPEC, "acme/big-gguf:q4_k_m", "acme/big-GGUF", "acme/big-GGUF/big-Q4_K_M.gguf",
             "hf://acme/big-GGUF/big-Q4_K_M.gguf", "big-Q4_K_M", "abi:big-Q4_K_M",
             f"{hub.url}/acme/big-GGUF/resolve/main/big-Q4_K_M.gguf", str(model.path)]
    for form in forms:
        assert resolve_local_model(form, settings) == model.path, form
    with pytest.raises(ModelNotFound, match="abi model download acme/big-GGUF:Q8_0"):
        resolve_local_model("acme/big-GGUF:Q8_0", settings)
    with pytest.raises(ModelNotFound, match="not in the cache; did you mean big-Q4_K_M"):
        resolve_local_model("big-Q4_K", settings)


async def test_hf_token_reaches_the_hub(settings, hub, data, monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_testtoken")
    await pull_model(settings, SPEC, options=fast())
    assert {r.authorization for r in hub.log} == {"Bearer hf_testtoken"}


async def test_names_stay_unique_and_map_back_from_paths(settings, hub, gguf_bytes) -> None:
    from abi_tui.models import model_name_for_path

    hub.add_repo("one/repo", {"same-Q4_K_M.gguf": gguf_bytes(31)})
    hub.add_repo("two/repo", {"same-Q4_K_M.gguf": gguf_bytes(32)})
    first = await pull_model(settings, "one/repo:Q4_K_M", options=fast())
    second = await pull_model(settings, "two/repo:Q4_K_M", options=fast())
    ids = sorted(m.id for m in cache.list_models(settings))
    assert ids == ["one/repo/same-Q4_K_M.gguf", "two/repo/same-Q4_K_M.gguf"]
    assert model_name_for_path(second.path, settings) == "two/repo/same-Q4_K_M.gguf"
    assert cache.find_model(settings, "one/repo:Q4_K_M").path == first.path
    with pytest.raises(Exception, match="several cached models"):
        cache.find_model(settings, "same-Q4_K_M")
    assert model_name_for_path(settings.home / "elsewhere" / "x-Q8_0.gguf", settings) == "x-Q8_0"
