"""Faults under the storage (issue 11): a model file deleted while loaded, the disk filling up
during a download, and SIGKILL of the server while it writes chats.db and the vector store."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from models.fakehub import FakeHub
from tiny_gguf import write_tiny_gguf

from abi_tui.models import cache, download
from abi_tui.models.download import DownloadOptions
from abi_tui.models.errors import InsufficientSpace
from abi_tui.models.pull import pull_model

from .clients import JSON
from .conftest import knob

pytestmark = pytest.mark.reliability

KILL_CYCLES = knob("kill_cycles", 2)
SPEC = "acme/big-GGUF:Q4_K_M"


# ----------------------------------------------------------------------------- deleted model
async def test_a_model_file_deleted_while_loaded(app_server, tiny_model, tiny_model_b, abi_home, figures):
    """llama.cpp maps the file: deleting it keeps the mapping valid. What a user sees: the loaded
    model keeps serving, `abi model list` no longer shows it, a reload of it fails clearly
    while the model in use keeps serving."""
    folder = abi_home / "models" / "local" / "tiny"
    folder.mkdir(parents=True)
    shutil.copy(tiny_model, folder / "tiny.gguf")
    shutil.copy(tiny_model_b, folder / "tiny-b.gguf")
    server = await app_server(model="tiny", threads=1, n_ctx=512, max_loaded_models=1)
    assert server.state.engine.active_name == "tiny"
    body = json.dumps({"prompt": "abc", "max_tokens": 4, "temperature": 0})
    async with aiohttp.ClientSession(server.url) as session:
        async def complete() -> int:
            async with session.post("/v1/completions", data=body, headers=JSON) as response:
                assert response.status == 200, await response.text()
                return (await response.json())["usage"]["completion_tokens"]

        assert await complete() == 4
        (folder / "tiny.gguf").unlink()
        for _ in range(3):
            assert await complete() == 4  # still serving from the mapping
        listed = subprocess.run([sys.executable, "-m", "abi_tui.cli", "model", "list", "--json"], capture_output=True,
                                text=True, env={**os.environ, "ABI_HOME": str(abi_home)}, timeout=120)
        assert listed.returncode == 0, listed.stderr
        names = [m["name"] for m in json.loads(listed.stdout)]
        assert "tiny" not in names and "tiny-b" in names
        async with session.get("/api/models") as response:
            assert "tiny" not in [m["name"] for m in (await response.json())["data"]]
        # Reloading the deleted file while it is active: refused before anything is touched.
        async with session.post("/admin/reload", data=json.dumps({"model": "tiny"}), headers=JSON) as response:
            error = (await response.json())["error"]
            assert response.status == 422 and "No such file" in error["message"], error
        assert await complete() == 4
        # Swap away (the pool keeps one model, so the deleted one is unloaded), then back.
        async with session.post("/admin/reload", data=json.dumps({"model": "tiny-b"}), headers=JSON) as response:
            assert response.status == 200, await response.text()
        async with session.post("/admin/reload", data=json.dumps({"model": "tiny"}), headers=JSON) as response:
            error = (await response.json())["error"]
            assert response.status == 404 and error["code"] == "model_not_found", error
            assert "not in the cache" in error["message"]
        assert await complete() == 4  # tiny-b serves on
    figures.set(faults_injected=1, faults_survived=1)


# ----------------------------------------------------------------------------- disk full
@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    fake = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no other tool's store leaks in
    data = write_tiny_gguf(tmp_path / "big.gguf", seed=11, name="m11", n_embd=256, n_layer=4, n_ff=512).read_bytes()
    fake.add_repo("acme/big-GGUF", {"big-Q4_K_M.gguf": data})
    fake.data = data
    yield fake
    fake.stop()


def fast(**kwargs) -> DownloadOptions:
    return DownloadOptions(**{"backoff_base_s": 0.02, "backoff_max_s": 0.2, "connections": 1, **kwargs})


def assert_not_registered(settings, folder: Path) -> None:
    assert not [m for m in cache.list_models(settings, include_stores=False) if m.repo == "acme/big-GGUF"]
    assert not list(folder.glob("*.gguf")) and not list(folder.glob("*.gguf.json"))


async def test_the_disk_filling_during_a_download(hub, monkeypatch, figures):
    """ENOSPC injected at the write call after 1 MiB: a clear error, nothing registered, the
    part kept, and the next pull resumes from it once there is room."""
    from abi_tui.config import load_settings

    settings = load_settings()
    real_write = download._write_all
    written = {"bytes": 0}

    def filling(fd, pieces, offset):
        size = sum(len(p) for p in pieces)
        if written["bytes"] + size > 1024 * 1024:
            raise OSError(errno.ENOSPC, "No space left on device")
        written["bytes"] += size
        real_write(fd, pieces, offset)

    monkeypatch.setattr(download, "_write_all", filling)
    with pytest.raises(InsufficientSpace) as caught:
        await pull_model(settings, SPEC, options=fast(write_block=256 * 1024))
    folder = settings.models_dir / "acme" / "big-GGUF"
    message = caught.value.message
    assert "disk filled up" in message and "resume" in message and caught.value.code == "insufficient_storage"
    assert_not_registered(settings, folder)
    part = folder / "big-Q4_K_M.gguf.part"
    assert part.exists() and 0 < part.stat().st_size <= 1024 * 1024
    assert (folder / "big-Q4_K_M.gguf.part.json").exists()
    monkeypatch.setattr(download, "_write_all", real_write)
    model = await pull_model(settings, SPEC, options=fast())
    assert model.path.read_bytes() == hub.data and model.verified
    ranges = [r.range for r in hub.file_requests()]
    assert ranges[-1] and ranges[-1].startswith("bytes=") and not ranges[-1].startswith("bytes=0-"), ranges
    figures.set(faults_injected=1, faults_survived=1, kept_bytes=written["bytes"])


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


async def test_a_real_full_disk_during_a_download_through_the_server(hub, app_server, tmp_path, monkeypatch,
                                                                       figures):
    """A small tmpfs as the model cache, filled by another writer while the download runs:
    POST /api/models/pull reports insufficient_storage, and nothing is registered."""
    mount = tmp_path / "small-disk"
    if not _mount_tmpfs(mount, "8m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the injected ENOSPC test covers the logic")
    try:
        monkeypatch.setenv("ABI_MODELS_DIR", str(mount / "models"))
        # No margin, so the free-space check passes and the disk fills while the bytes arrive.
        from abi_tui.models import pull

        real_check = download.check_free_space
        for module in (download, pull):
            monkeypatch.setattr(module, "check_free_space", lambda where, needed, margin: real_check(where, needed, 0))
        hub.throttle_bps = 1.5 * 1024 * 1024
        server = await app_server()
        filler = mount / "other-program.bin"

        async def fill_when_started() -> None:
            folder = mount / "models" / "acme" / "big-GGUF"
            deadline = time.monotonic() + 30
            while not (folder / "big-Q4_K_M.gguf.part").exists():
                assert time.monotonic() < deadline, "the download never started"
                await asyncio.sleep(0.01)
            free = shutil.disk_usage(mount).free
            with open(filler, "wb") as out:  # leave less room than the rest of the file needs
                out.write(b"\0" * max(0, free - 512 * 1024))

        filling = asyncio.create_task(fill_when_started())
        async with aiohttp.ClientSession(server.url) as session:
            async with session.post("/api/models/pull", data=json.dumps({"model": SPEC, "stream": False}),
                                    headers=JSON) as response:
                error = (await response.json())["error"]
        await asyncio.wait_for(filling, 30)
        assert response.status == 507 and error["code"] == "insufficient_storage", error
        assert "disk filled up" in error["message"]
        settings = server.state.settings
        assert_not_registered(settings, settings.models_dir / "acme" / "big-GGUF")
        figures.set(faults_injected=1, faults_survived=1)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


# ----------------------------------------------------------------------------- SIGKILL
def _chromadb_turn_ids(home: Path) -> dict[str, str]:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    client = chromadb.PersistentClient(path=str(home / "vectors"), settings=ChromaSettings(anonymized_telemetry=False))
    found: dict[str, str] = {}
    for collection in client.list_collections():
        got = client.get_collection(collection.name).get(include=["documents"])
        found.update(zip(got["ids"], got["documents"]))
    return found


async def test_sigkill_during_chat_and_vector_writes_loses_no_finished_turn(serve, tiny_model, tiny_env, abi_home,
                                                                            figures):
    """Persona turns in a loop, the server SIGKILLed at a random moment (mid-request, mid-write),
    restarted: chats.db and the vector store open, and the last finished turn is in both (as
    memory items in the vector store)."""
    from abi_tui.memory.chats import ChatStore

    rng = random.Random(5)
    conversation = None
    finished: list[dict] = []
    kills = interrupted = 0
    for _cycle in range(KILL_CYCLES):
        server = serve("--model", str(tiny_model), env=tiny_env)
        kill_at = time.monotonic() + rng.uniform(1.5, 3.0)
        async with aiohttp.ClientSession(server.url, timeout=aiohttp.ClientTimeout(total=30)) as session:
            n = 0
            while True:
                n += 1
                body = {"content": f"turn {len(finished)} about the garden and the weather", "stream": False,
                        "max_tokens": 8, **({"conversation_id": conversation} if conversation else {})}
                request = asyncio.create_task(session.post("/api/v1/chat", data=json.dumps(body), headers=JSON))
                if time.monotonic() >= kill_at:
                    await asyncio.sleep(rng.uniform(0, 0.03))  # into the request's writes
                    server.process.send_signal(signal.SIGKILL)
                    server.process.wait(10)
                    kills += 1
                    try:
                        response = await request
                        answer = await response.json()
                        if response.status == 200:  # it finished before the kill landed
                            finished.append(answer)
                    except (aiohttp.ClientError, ValueError):
                        interrupted += 1
                    break
                response = await request
                assert response.status == 200, await response.text()
                answer = await response.json()
                conversation = answer["conversation_id"]
                finished.append(answer)
        server.stop()
    assert finished, "no turn finished before the kill"
    last = finished[-1]
    # Restart: both stores open; the last finished turn is in chats.db, complete.
    server = serve("--model", str(tiny_model), env=tiny_env)
    async with aiohttp.ClientSession(server.url) as session:
        async with session.get(f"/api/v1/conversations/{last['conversation_id']}") as response:
            assert response.status == 200
            messages = (await response.json())["messages"]
        by_id = {m["id"]: m for m in messages}
        assert by_id[last["message_id"]]["status"] == "done"
        assert by_id[last["message_id"]]["content"] == last["content"]
        assert not [m for m in messages if m["status"] == "streaming"]  # an answer cut off is 'incomplete'
        # The next turn opens the vector store, which stores what the kill cut off.
        body = {"content": "and one more turn after the restart", "conversation_id": last["conversation_id"],
                "stream": False, "max_tokens": 4}
        async with session.post("/api/v1/chat", data=json.dumps(body), headers=JSON) as response:
            assert response.status == 200, await response.text()
    assert server.stop(signal.SIGINT) == 0
    with ChatStore(abi_home / "chats.db") as store:
        assert store.get_message(last["message_id"]).content == last["content"]
    vectors = await asyncio.to_thread(_chromadb_turn_ids, abi_home)
    # Memory keeps what is worth recalling, one item per sentence: the user's statement of the
    # last finished turn is in the vector store (restored there after the restart if the kill cut
    # its write off). The tiny model's random answer holds no sentence worth an item.
    user_id = by_id[last["message_id"]]["id"] - 1
    assert vectors.get(f"m{user_id}.0") == by_id[user_id]["content"]
    figures.set(kills=kills, turns_finished=len(finished), requests_interrupted=interrupted,
                faults_injected=kills, faults_survived=kills, vectors=len(vectors))
