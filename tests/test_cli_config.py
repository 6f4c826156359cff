"""The `abi` command line and configuration precedence."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from abi_tui.config import ConfigError, load_settings, save_setting


def abi(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "abi_tui.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args", [["--help"], ["dash", "--help"], ["model", "--help"], ["bench", "--help"],
                                  ["bench", "streaming", "--help"], ["model", "download", "--help"]])
def test_help_everywhere(args):
    result = abi(*args)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.parametrize("args,needle", [
    (["dash", "--serve", "--bogus"], "unrecognized arguments: --bogus"),
    (["dash", "--serve", "--port", "abc"], "--port"),
    (["dash", "--serve", "--port", "70000"], "port number"),
    (["dash", "--serve", "--max-streams", "0"], "positive integer"),
    (["dash", "--serve", "--connect", "http://x"], "not allowed with argument"),
    (["dash", "--serve", "--flash-attn", "fast"], "invalid choice: 'fast'"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_flags_exit_2_with_one_line(args, needle):
    result = abi(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_malformed_config_names_file_line_and_key(abi_home):
    (abi_home / "config.toml").write_text('[server]\nhost = "127.0.0.1"\nport = "eighty"\n')
    result = abi("dash", "--serve")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and "config.toml" in line and "line 3" in line and "server.port" in line
    (abi_home / "config.toml").write_text('[server]\nport = 80\nmax_queue = = 3\n')
    result = abi("dash", "--serve")
    assert result.returncode == 2 and "line 3" in result.stderr and "max_queue" in result.stderr
    assert "Traceback" not in result.stderr
    (abi_home / "config.toml").write_text('[server]\nport = 80\n\nflash_attn = "fast"\n')
    result = abi("dash", "--serve")
    assert result.returncode == 2 and "line 4" in result.stderr and "server.flash_attn" in result.stderr
    assert "expected one of auto, on, off, got 'fast'" in result.stderr
    (abi_home / "config.toml").write_text('[servre]\nport = 80\n')
    result = abi("dash", "--serve")
    assert result.returncode == 2 and "unknown section" in result.stderr


def test_precedence_flag_over_env_over_file_over_default(abi_home):
    assert load_settings(env={"ABI_HOME": str(abi_home)}).server.max_queue == 64
    (abi_home / "config.toml").write_text("[server]\nmax_queue = 10\nheartbeat_ms = 500\n")
    env = {"ABI_HOME": str(abi_home)}
    assert load_settings(env=env).server.max_queue == 10
    env["ABI_MAX_QUEUE"] = "20"
    assert load_settings(env=env).server.max_queue == 20
    settings = load_settings({"server.max_queue": 30}, env=env)
    assert settings.server.max_queue == 30 and settings.server.heartbeat_ms == 500
    assert load_settings(env={**env, "ABI_FLASH_ATTN": "off"}).server.flash_attn == "off"
    with pytest.raises(ConfigError, match="ABI_FLASH_ATTN: expected one of"):
        load_settings(env={**env, "ABI_FLASH_ATTN": "yes"})
    with pytest.raises(ConfigError, match="ABI_MAX_QUEUE"):
        load_settings(env={**env, "ABI_MAX_QUEUE": "lots"})
    env["ABI_API_TOKEN"] = "t"
    assert load_settings(env=env).admin_token == "t"  # the admin token defaults to the API token


def test_save_setting_keeps_the_rest_of_the_file(abi_home):
    path = abi_home / "config.toml"
    path.write_text("# mine\n[server]\nport = 9000\n")
    settings = load_settings(env={"ABI_HOME": str(abi_home)})
    save_setting(settings, "ui.theme", "abi-light")
    save_setting(settings, "server.port", 9001)
    text = path.read_text()
    assert "# mine" in text and "port = 9001" in text and 'theme = "abi-light"' in text
    reloaded = load_settings(env={"ABI_HOME": str(abi_home)})
    assert reloaded.ui.theme == "abi-light" and reloaded.server.port == 9001


def test_non_loopback_bind_without_token_is_refused():
    result = abi("dash", "--serve", "--host", "0.0.0.0")
    assert result.returncode == 2 and "--token" in result.stderr


def test_port_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = abi("dash", "--serve", "--port", str(port))
    assert result.returncode == 2 and "in use" in result.stderr


def test_sigterm_lets_the_stream_finish_and_exits_0(serve, abi_home):
    server = serve()
    body = json.dumps({"model": "mock/constant_rate?min_ms=50&max_ms=50", "prompt": "a b", "max_tokens": 20,
                       "stream": True}).encode()
    result: dict = {}

    def stream():
        request = urllib.request.Request(f"{server.url}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            result["text"] = response.read().decode()

    reader = threading.Thread(target=stream)
    reader.start()
    time.sleep(0.3)
    assert server.stop(signal.SIGTERM) == 0
    reader.join(10)
    assert result["text"].rstrip().endswith("data: [DONE]")
    assert result["text"].count('"text":') >= 20
    log = (abi_home / "logs" / "server.log").read_text()
    assert "listening on" in log and "stopped" in log


def test_dash_hands_its_flags_to_its_server_process(monkeypatch, abi_home):
    """`abi dash --model M --n-ctx N ...` starts `abi dash --serve` with the same flags, but on a
    free loopback port with its own token; the app gets the handle, not a URL."""
    from abi_tui import app as app_module
    from abi_tui import cli
    from abi_tui.server.supervisor import ServerSupervisor

    seen: dict = {}
    monkeypatch.setattr(ServerSupervisor, "launch", lambda self: seen.setdefault("launched", self))
    monkeypatch.setattr(ServerSupervisor, "stop", lambda self: seen.setdefault("stopped", self))
    monkeypatch.setattr(app_module, "run_app", lambda settings, **kwargs: seen.update(kwargs) or 0)
    assert cli.main(["dash", "--model", "m.gguf", "--n-ctx", "2048", "--parallel", "2", "--port", "9999",
                     "--host", "0.0.0.0", "--token", "mine", "--flash-attn", "on"]) == 0
    supervisor = seen["server"]
    assert seen["launched"] is supervisor and seen["stopped"] is supervisor and "connect" not in seen
    assert supervisor.flags == ["--model", "m.gguf", "--n-ctx", "2048", "--parallel", "2", "--flash-attn", "on"]
    command = supervisor.command(4321)
    assert command[command.index("--host") + 1] == "127.0.0.1" and command[command.index("--port") + 1] == "4321"
    assert "mine" not in command and supervisor.token != "mine" and len(supervisor.token) >= 24
    assert ServerSupervisor().token != supervisor.token  # fresh for every dashboard


def test_dash_connect_starts_no_server(monkeypatch, abi_home):
    from abi_tui import app as app_module
    from abi_tui import cli
    from abi_tui.server.supervisor import ServerSupervisor

    seen: dict = {}
    monkeypatch.setattr(ServerSupervisor, "launch", lambda self: pytest.fail("--connect started a server"))
    monkeypatch.setattr(app_module, "run_app", lambda settings, **kwargs: seen.update(kwargs) or 0)
    assert cli.main(["dash", "--connect", "http://10.0.0.2:8642", "--token", "t"]) == 0
    assert seen == {"connect": "http://10.0.0.2:8642", "token": "t"}
