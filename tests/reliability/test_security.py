"""Security (issue 11): tokens on every route, the admin token on /admin/*, the WebSocket
upgrade, path traversal into or out of the model cache, and secrets kept out of logs and
telemetry. Every hostile input tried is counted in the figures."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import aiohttp
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models.fakehub import FakeHub
from tiny_gguf import write_tiny_gguf
from websockets.exceptions import InvalidStatus

from abi_tui.errors import AbiError
from abi_tui.models import cache
from abi_tui.models.pull import pull_model
from abi_tui.server.openapi import openapi_document
from abi_tui.server.routes_ollama import ROUTES as OLLAMA_ROUTES

from .clients import JSON
from .conftest import knob

pytestmark = pytest.mark.reliability

TOKEN = "tok-3f9a1c77e2d04b1e"
ADMIN = "adm-8c2e5b90d17f4a63"
PROPERTY_EXAMPLES = knob("property_examples", 200)
BROWSER_ROUTES = ("/api/stream/ws", "/api/events")


def header_tricks(token: str) -> list[tuple[str, dict[str, str], str]]:
    """(name, headers, query) that must all be refused: missing, wrong, and the right token
    presented the wrong way."""
    basic = base64.b64encode(f"user:{token}".encode()).decode()
    return [
        ("missing", {}, ""),
        ("wrong token", {"Authorization": "Bearer wrong"}, ""),
        ("empty bearer", {"Authorization": "Bearer "}, ""),
        ("scheme only", {"Authorization": "Bearer"}, ""),
        ("lowercase scheme", {"Authorization": f"bearer {token}"}, ""),
        ("uppercase scheme", {"Authorization": f"BEARER {token}"}, ""),
        ("two spaces", {"Authorization": f"Bearer  {token}"}, ""),
        ("tab", {"Authorization": f"Bearer\t{token}"}, ""),
        ("no scheme", {"Authorization": token}, ""),
        ("other scheme", {"Authorization": f"Token {token}"}, ""),
        ("basic auth", {"Authorization": f"Basic {basic}"}, ""),
        ("token prefix", {"Authorization": f"Bearer {token[:-1]}"}, ""),
        ("token plus", {"Authorization": f"Bearer {token}x"}, ""),
        ("two tokens", {"Authorization": f"Bearer {token} {token}"}, ""),
        ("x-api-key", {"X-Api-Key": token}, ""),
        ("api-key", {"api-key": token}, ""),
        ("cookie", {"Cookie": f"token={token}"}, ""),
        ("query token on http", {}, f"token={token}"),
        ("query api_key", {}, f"api_key={token}"),
        ("bearer subprotocol on http", {"Sec-WebSocket-Protocol": f"bearer.{token}"}, ""),
    ]


def routes(app) -> list[tuple[str, str]]:
    """Every (method, path) the OpenAPI document lists, path parameters filled in."""
    out = []
    for path, operations in openapi_document(app)["paths"].items():
        concrete = path.replace("{name}", "x").replace("{conversation_id}", "x").replace("{persona}", "abi") \
            .replace("{id}", "x").replace("{action}", "pause")
        for method in operations:
            out.append((method.upper(), concrete))
    return out


async def test_every_route_but_health_refuses_missing_and_wrong_tokens(app_server, figures):
    server = await app_server(token=TOKEN, admin_token=ADMIN)
    tried = 0
    async with aiohttp.ClientSession(server.url) as session:
        table = routes(server.app)
        assert len(table) >= 25
        for method, path in table:
            for name, headers, query in header_tricks(TOKEN if not path.startswith("/admin/") else ADMIN):
                if path in BROWSER_ROUTES and name in ("query token on http", "bearer subprotocol on http"):
                    continue  # the documented forms for browsers on these two routes
                url = f"{path}?{query}" if query else path
                async with session.request(method, url, headers={**JSON, **headers}, data=b"{}") as response:
                    tried += 1
                    if path == "/health":
                        assert response.status == 200
                        continue
                    assert response.status == 401, f"{method} {path} with {name}: {response.status}"
                    error = (await response.json())["error"]
                    if path in OLLAMA_ROUTES:  # Ollama's error shape on its routes: the message alone
                        assert "token" in error
                        continue
                    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
        # Unknown routes too: nothing is revealed without a token.
        async with session.get("/no/such/route") as response:
            assert response.status == 401
        # and the right token is accepted
        async with session.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200
    figures.set(hostile_inputs=tried, routes=len(table))


async def test_admin_routes_refuse_the_api_token_however_the_path_is_spelled(app_server, figures):
    server = await app_server(token=TOKEN, admin_token=ADMIN)
    spellings = ["/admin/reload", "/%61dmin/reload", "/admin/%72eload", "/admin%2Freload", "//admin/reload",
                 "/admin//reload", "/admin/./reload", "/api/../admin/reload", "/ADMIN/reload", "/admin/reload/",
                 "/admin/reload?x=1", "/admin/reload%00", "/admin/reload;x"]
    tried = 0
    async with aiohttp.ClientSession() as session:
        for path in spellings:
            for token in (TOKEN, None):
                headers = {**JSON, **({"Authorization": f"Bearer {token}"} if token else {})}
                async with session.post(aiohttp.client.URL(server.url + path, encoded=True), headers=headers,
                                        data=json.dumps({"model": "x"})) as response:
                    tried += 1
                    assert response.status in (401, 404, 405), f"{path}: {response.status} {await response.text()}"
        async with session.post(server.url + "/admin/reload", headers={**JSON, "Authorization": f"Bearer {ADMIN}"},
                                data=json.dumps({"model": "no-such-model"})) as response:
            assert response.status == 404  # the admin token gets through to the handler
        # The admin token is not an API token unless it is the same.
        async with session.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {ADMIN}"}) as response:
            assert response.status == 401
    figures.set(hostile_inputs=tried)


async def test_the_websocket_refuses_an_unauthenticated_upgrade(app_server, figures):
    server = await app_server(token=TOKEN)
    ws_url = server.url.replace("http://", "ws://") + "/api/stream/ws"
    refused = [
        {},
        {"additional_headers": {"Authorization": "Bearer wrong"}},
        {"additional_headers": {"Authorization": f"bearer {TOKEN}"}},
        {"subprotocols": ["bearer.wrong"]},
        {"subprotocols": [f"Bearer.{TOKEN}"]},
        {"subprotocols": [TOKEN]},
    ]
    for url, kwargs in [(ws_url, k) for k in refused] + [(f"{ws_url}?token=wrong", {}), (f"{ws_url}?token=", {}),
                                                         (f"{ws_url}?Token={TOKEN}", {})]:
        with pytest.raises(InvalidStatus) as caught:
            async with websockets.connect(url, **kwargs):
                pass
        assert caught.value.response.status_code == 401, (url, kwargs)
    # Each accepted form works.
    for url, kwargs in [(f"{ws_url}?token={TOKEN}", {}), (ws_url, {"subprotocols": [f"bearer.{TOKEN}"]}),
                        (ws_url, {"additional_headers": {"Authorization": f"Bearer {TOKEN}"}})]:
        async with websockets.connect(url, **kwargs) as ws:
            await ws.send(json.dumps({"type": "request", "prompt": "a b", "max_tokens": 2,
                                      "model": "mock/constant_rate?min_ms=1&max_ms=1"}))
            kinds = [json.loads(await ws.recv())["type"] for _ in range(4)]
            assert kinds == ["start", "token", "token", "end"]
    figures.set(hostile_inputs=len(refused) + 3)


# ----------------------------------------------------------------------------- traversal
UNSAFE = st.sampled_from(["..", ".", "../..", "/", "\\", "..\\..", "/etc", "%2e%2e", "a/../..", "\x00", "\n",
                          "~", "C:", "//", "./../"])


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(repo=st.lists(st.one_of(UNSAFE, st.text(max_size=8)), min_size=1, max_size=4).map("/".join),
       name=st.lists(st.one_of(UNSAFE, st.text(max_size=12)), min_size=1, max_size=4).map("/".join),
       host=st.one_of(st.none(), st.sampled_from(["..", ".", "evil", "a..b"])))
def test_cache_destinations_never_leave_the_models_folder(tmp_path_factory, repo, name, host):
    models = tmp_path_factory.mktemp("cache") / "models"
    try:
        if host is None:
            path = cache.destination(models, repo=repo, path_in_repo=name)
        else:
            path = cache.destination(models, repo=None, path_in_repo=name, url=f"https://{host}/x")
    except AbiError:
        return  # refused: fine
    except ValueError:
        return  # a NUL byte the OS would refuse
    assert path.resolve().is_relative_to(models.resolve()) and path.resolve() != models.resolve()


@pytest.fixture
def evil_hub(monkeypatch, tmp_path):
    fake = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data = write_tiny_gguf(tmp_path / "evil-src.gguf", seed=3, name="evil").read_bytes()
    for name in ("../../../evil-Q4_K_M.gguf", "/tmp/evil-abs-Q4_K_M.gguf", "..\\..\\evil-bs-Q4_K_M.gguf",
                 "sub/../../../evil-mid-Q4_K_M.gguf"):
        fake.add_repo(f"acme/evil{len(fake.repos)}-GGUF", {name: data})
    fake.add_repo("acme/fine-GGUF", {"fine-Q4_K_M.gguf": data})
    fake.plain_files["../../evil-url.gguf"] = data
    yield fake
    fake.stop()


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


async def test_hostile_names_never_write_outside_abi_home(evil_hub, abi_home, tmp_path, figures):
    """Hub file names with ../, absolute paths and backslashes, a URL naming ../, and a
    symlink planted in the cache: every download is refused or lands inside the cache."""
    from abi_tui.config import load_settings
    from abi_tui.models.download import DownloadOptions

    outside = tmp_path / "outside"
    outside.mkdir()
    watch = [abi_home.parent, tmp_path]
    before = {root: files_under(root) for root in watch}
    settings = load_settings()
    models = settings.models_dir.resolve()
    options = DownloadOptions(backoff_base_s=0.01, backoff_max_s=0.05, max_retries=1)
    tried = refused = 0
    specs = [f"acme/evil{i}-GGUF" for i in range(4)] + [
        f"{evil_hub.url}/files/..%2F..%2Fevil-url.gguf", f"{evil_hub.url}/files/%2e%2e%2f%2e%2e%2fevil-url.gguf"]
    for spec in specs:
        tried += 1
        try:
            model = await pull_model(settings, spec, options=options)
        except AbiError:
            refused += 1
            continue
        assert model.path.resolve().is_relative_to(models), model.path  # e.g. /tmp/x.gguf -> <cache>/.../tmp/x.gguf
    assert refused >= 4
    # A symlink inside the cache that leads out of it.
    (settings.models_dir / "acme").mkdir(parents=True, exist_ok=True)
    (settings.models_dir / "acme" / "fine-GGUF").symlink_to(outside, target_is_directory=True)
    tried += 1
    with pytest.raises(AbiError, match="outside the model cache"):
        await pull_model(settings, "acme/fine-GGUF", options=options)
    assert not any(outside.iterdir())
    for root in watch:
        new = {p for p in files_under(root) - before[root] if not p.is_relative_to(abi_home)}
        assert not [p for p in new if "evil" in p.name], new
    assert not Path("/tmp/evil-abs-Q4_K_M.gguf").exists()
    figures.set(hostile_inputs=tried)


async def test_model_names_in_requests_cannot_reach_outside_files(app_server, abi_home, tmp_path, figures):
    sentinel = tmp_path / "sentinel.gguf"
    sentinel.write_text("SENTINEL-CONTENT not a model")
    server = await app_server(token=TOKEN)
    auth = {**JSON, "Authorization": f"Bearer {TOKEN}"}
    names = [str(sentinel), "../" * 12 + "etc/passwd", "/etc/passwd", "/etc/shadow", "/dev/zero", "/proc/self/environ",
             "hf://../../etc/passwd", "owner/repo/../../../etc/passwd.gguf", "file:///etc/passwd", "~/.ssh/id_rsa",
             "\x00", "a" * 5000, "~nosuchuser/model.gguf", "/" + "b/" * 3000]
    tried = 0
    async with aiohttp.ClientSession(server.url) as session:
        for name in names:
            for method, path, body in (
                    ("POST", "/v1/completions", {"model": name, "prompt": "x", "max_tokens": 1}),
                    ("POST", "/admin/reload", {"model": name}),
                    ("POST", "/api/models/pull", {"model": name, "stream": False}),
                    ("POST", "/v1/embeddings", {"model": name, "input": "x"})):
                async with session.request(method, path, headers=auth, data=json.dumps(body)) as response:
                    tried += 1
                    text = await response.text()
                    assert 400 <= response.status < 500, f"{path} {name!r}: {response.status} {text[:200]}"
                    assert "SENTINEL-CONTENT" not in text and "root:" not in text
            quoted = aiohttp.client.URL("/api/models/" + name.replace("/", "%2F"), encoded=True) \
                if "\x00" not in name else "/api/models/x%00"
            for method in ("GET", "DELETE"):
                async with session.request(method, quoted, headers=auth) as response:
                    tried += 1
                    assert response.status in (400, 404), (method, name, response.status)
    assert sentinel.read_text() == "SENTINEL-CONTENT not a model"
    figures.set(hostile_inputs=tried)


# ----------------------------------------------------------------------------- secrets
async def test_no_secret_in_logs_or_telemetry(serve, abi_home, figures):
    secrets = {"api": TOKEN, "admin": ADMIN, "hf": "hf_SeCrEtHuGgInGfAcE0123", "openai": "sk-SeCrEtOpEnAi0123"}
    server = serve("--token", TOKEN, "--admin-token", ADMIN,
                   env={"HF_TOKEN": secrets["hf"], "OPENAI_API_KEY": secrets["openai"], "ABI_HOME": str(abi_home)})
    ws_url = server.url.replace("http://", "ws://") + "/api/stream/ws"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    seen: list[str] = []
    async with aiohttp.ClientSession(server.url) as session:
        for headers in ({"Authorization": f"Bearer {TOKEN[:-2]}xx"}, {"Authorization": f"bearer {TOKEN}"}, {}):
            async with session.get("/v1/models", headers=headers) as response:
                assert response.status == 401
                seen.append(await response.text())
        async with session.post("/admin/reload", headers={**JSON, **auth}, data=json.dumps({"model": "x"})) as response:
            assert response.status == 401
            seen.append(await response.text())
        async with session.post("/admin/reload", headers={**JSON, "Authorization": f"Bearer {ADMIN}"},
                                data=json.dumps({"model": "/nonexistent/model.gguf"})) as response:
            seen.append(await response.text())
        async with session.post("/api/stream", headers={**JSON, **auth},
                                data=json.dumps({"prompt": "hello", "max_tokens": 3})) as response:
            seen.append(await response.text())
        for path in ("/health", "/api/telemetry?history=300", "/metrics", "/openapi.json", "/v1/models",
                     "/api/models", "/api/v1/personas/metrics"):
            async with session.get(path, headers=auth) as response:
                seen.append(await response.text())
        async with session.get(f"/api/events?token={TOKEN}&since=all") as response:
            assert response.status == 200
            seen.append((await response.content.read(4096)).decode())
    async with websockets.connect(f"{ws_url}?token={TOKEN}") as ws:
        await ws.send(json.dumps({"type": "request", "prompt": "a", "max_tokens": 1}))
        seen.append(await ws.recv())
    with pytest.raises(InvalidStatus):
        async with websockets.connect(f"{ws_url}?token={ADMIN}"):
            pass
    server.stop()
    log_text = (abi_home / "logs" / "server.log").read_text()
    stderr = server.stderr if not server.stderr_file.closed else ""
    for label, secret in secrets.items():
        assert secret not in log_text, f"{label} token in server.log"
        assert secret not in stderr, f"{label} token on stderr"
        for text in seen:
            assert secret not in text, f"{label} token in an API answer"
    figures.set(hostile_inputs=6, answers_checked=len(seen), log_bytes=len(log_text))


# ----------------------------------------------------------------------------- file oracle
def _outside_pairs(tmp_path: Path, tiny_model: Path) -> list[tuple[str, str]]:
    """(an existing file outside the allowed folders, a missing one spelled the same way)."""
    real_model = tmp_path / "elsewhere" / "real.gguf"
    real_model.parent.mkdir()
    real_model.write_bytes(tiny_model.read_bytes())  # a valid GGUF: loading it would be a 200
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("SENTINEL-CONTENT")
    depth = "../" * 16
    return [
        (str(real_model), str(real_model.with_name("gone.gguf"))),
        (str(sentinel), str(sentinel.with_name("missing.txt"))),
        ("/etc/passwd", "/etc/passwd-no-such"),
        (depth + "etc/passwd", depth + "etc/passwd-no-such"),
        ("/etc", "/etc-no-such"),
        ("/dev/null", "/dev/no-such"),
        (str(tmp_path / "elsewhere"), str(tmp_path / "nowhere")),
        (f"{tmp_path}/elsewhere/../sentinel.txt", f"{tmp_path}/elsewhere/../missing.txt"),
        ("etc/passwd", "etc/no-such"),  # relative: found or not from the server's working directory
    ]


async def test_outside_paths_answer_the_same_whether_the_file_exists_or_not(app_server, abi_home, tmp_path,
                                                                            tiny_model, figures, monkeypatch):
    monkeypatch.chdir("/")
    pairs = _outside_pairs(tmp_path, tiny_model)
    # A symlink inside an allowed folder that leads out of it counts as outside. (The models
    # folder itself is the cache: what the user put there is listed, and listed models load.)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "link.gguf").symlink_to(tmp_path / "elsewhere" / "real.gguf")
    (allowed / "dangling.gguf").symlink_to(tmp_path / "elsewhere" / "gone.gguf")
    pairs.append((str(allowed / "link.gguf"), str(allowed / "dangling.gguf")))
    pairs.append((str(allowed / "sub" / ".." / ".." / "elsewhere" / "real.gguf"), str(allowed / ".." / "gone.gguf")))
    server = await app_server(token=TOKEN, model_dirs=str(allowed))
    auth = {**JSON, "Authorization": f"Bearer {TOKEN}"}
    ws_url = server.url.replace("http://", "ws://") + f"/api/stream/ws?token={TOKEN}"
    tried = 0

    def normalized(text: str, name: str) -> str:
        return text.replace(json.dumps(name)[1:-1], "<name>").replace(repr(name), "'<name>'")

    async with aiohttp.ClientSession(server.url) as session:
        for existing, missing in pairs:
            for method, path, body in (
                    ("POST", "/v1/completions", {"prompt": "x", "max_tokens": 1}),
                    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}),
                    ("POST", "/api/stream", {"prompt": "x", "max_tokens": 1}),
                    ("POST", "/admin/reload", {}),
                    ("POST", "/v1/embeddings", {"input": "x"}),
                    ("POST", "/api/v1/chat/abi", {"content": "x", "max_tokens": 1, "stream": False})):
                answers = []
                for name in (existing, missing):
                    async with session.request(method, path, headers=auth,
                                               data=json.dumps({**body, "model": name})) as response:
                        tried += 1
                        answers.append((response.status, normalized(await response.text(), name)))
                assert answers[0] == answers[1], f"{path} {existing!r}: {answers}"
                assert answers[0][0] == 404, (path, existing, answers[0])
                assert "SENTINEL" not in answers[0][1] and "root:" not in answers[0][1]
            async with websockets.connect(ws_url) as ws:
                answers = []
                for name in (existing, missing):
                    await ws.send(json.dumps({"type": "request", "request_id": "r", "prompt": "x", "max_tokens": 1,
                                              "model": name}))
                    tried += 1
                    answers.append(normalized(await ws.recv(), name))
                assert answers[0] == answers[1], answers
    # Inside an allowed folder a path is a model like any other.
    inside = allowed / "mine.gguf"
    inside.write_bytes(tiny_model.read_bytes())
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/v1/completions", headers=auth, data=json.dumps(
                {"model": str(inside), "prompt": "x", "max_tokens": 1})) as response:
            assert response.status == 200, await response.text()
    figures.set(hostile_inputs=tried)


async def test_the_command_line_and_config_may_name_any_file(app_server, tmp_path, tiny_model):
    """`--model` and config.toml are the user's own choice: trusted, wherever the file is."""
    elsewhere = tmp_path / "anywhere" / "own.gguf"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(tiny_model.read_bytes())
    server = await app_server(model=str(elsewhere), threads=1, n_ctx=256)
    async with aiohttp.ClientSession(server.url) as session:
        async with session.get("/health") as response:
            assert (await response.json())["model"] == "own"
        async with session.post("/v1/completions", headers=JSON, data=json.dumps(
                {"model": "own", "prompt": "x", "max_tokens": 1})) as response:
            assert response.status == 200
        # The same file by path from a client: not under the model folders.
        async with session.post("/admin/reload", headers=JSON, data=json.dumps({"model": str(tiny_model)})) as response:
            assert response.status == 404
    # server.model_dirs opens a folder to clients.
    server = await app_server(model_dirs=str(tiny_model.parent), threads=1, n_ctx=256)
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/v1/completions", headers=JSON, data=json.dumps(
                {"model": str(tiny_model), "prompt": "x", "max_tokens": 1})) as response:
            assert response.status == 200, await response.text()
