"""The browser guard's pieces (server/guard.py), the settings behind it, and the model-path
confinement (models/confine.py), each on its own; tests/reliability/test_browser_attacks.py
drives them through a real server."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from abi_tui.cli import build_parser, flag_overrides
from abi_tui.config import ConfigError, Settings, load_settings, save_setting
from abi_tui.models.confine import file_inside
from abi_tui.server import guard


def settings_for(host: str = "127.0.0.1", **server: object) -> Settings:
    settings = Settings(home=Path("/nonexistent"))
    settings.server.host = host
    for key, value in server.items():
        setattr(settings.server, key, value)
    return settings


def request(method: str = "GET", **headers: str):
    return make_mocked_request(method, "/v1/models", headers=headers)


@pytest.mark.parametrize(("value", "expected"), [
    ("localhost:8420", ("localhost", 8420)), ("LOCALHOST", ("localhost", None)), ("[::1]:80", ("::1", 80)),
    ("[::1]", ("::1", None)), ("127.0.0.1.", ("127.0.0.1", None)), ("a.example:0", None), ("a:99999", None),
    ("::1", None), ("[::1", None), ("[::1]x", None), ("a:b", None), (":80", None), ("", None),
])
def test_split_host(value, expected):
    assert guard.split_host(value) == expected


@pytest.mark.parametrize(("header", "ok"), [
    ("application/json", True), ("Application/JSON", True), ("application/json; charset=utf-8", True),
    ('application/json;charset="UTF-8"', True), ("application/json; charset=latin-1", False),
    ("application/json; boundary=x", False), ("text/plain", False), ("application/x-www-form-urlencoded", False),
    ("multipart/form-data; boundary=x", False), ("application/vnd.api+json", False), ("", False),
    ("application/jsonx", False), ("text/json", False),
])
def test_only_json_is_json(header, ok):
    assert guard.is_json_content_type(header) is ok


def test_the_host_check_by_bind():
    loopback = settings_for("127.0.0.1")
    for host in ("127.0.0.1:1", "localhost", "[::1]:9"):
        guard.check_host(request(Host=host), loopback)
    guard.check_host(request(), loopback)  # no Host at all: HTTP/1.0, not a browser
    for host in ("evil.example", "127.0.0.2", "localhost.evil.example", "[::1"):
        with pytest.raises(guard.Forbidden):
            guard.check_host(request(Host=host), loopback)
    # A name on the list: any port unless the entry names one.
    listed = settings_for("127.0.0.1", allowed_hosts=["abi.lan", "box:9000"])
    guard.check_host(request(Host="abi.lan:1234"), listed)
    guard.check_host(request(Host="box:9000"), listed)
    with pytest.raises(guard.Forbidden):
        guard.check_host(request(Host="box:9001"), listed)
    # Not loopback: the token guards, and the list applies once set (then only the list).
    anywhere = settings_for("0.0.0.0")
    guard.check_host(request(Host="whatever.example"), anywhere)
    strict = settings_for("0.0.0.0", allowed_hosts=["abi.lan"])
    guard.check_host(request(Host="abi.lan"), strict)
    with pytest.raises(guard.Forbidden):
        guard.check_host(request(Host="localhost"), strict)
    # Bound to another loopback address: that address is its own name.
    guard.check_host(request(Host="127.0.0.5:80"), settings_for("127.0.0.5"))


def test_the_origin_check():
    settings = settings_for(cors_origins=["https://app.example"])
    same = request(Host="127.0.0.1:8420", Origin="http://127.0.0.1:8420")
    assert guard.check_origin(same, settings) == "http://127.0.0.1:8420"
    assert guard.check_origin(request(Host="127.0.0.1:8420"), settings) is None
    assert guard.check_origin(request(Host="x:1", Origin="https://APP.example/"), settings) == "https://APP.example/"
    # Behind a TLS proxy the Host has no port: the page's scheme's default port.
    assert guard.check_origin(request(Host="abi.lan", Origin="https://abi.lan"), settings)
    for origin in ("http://127.0.0.1:8421", "http://localhost:8420", "null", "https://app.example:444",
                   "http://127.0.0.1:8420/path", "ftp://127.0.0.1:8420", "http://127.0.0.1:8420?x", ""):
        with pytest.raises(guard.Forbidden) as refused:
            guard.check_origin(request(Host="127.0.0.1:8420", Origin=origin), settings)
        assert refused.value.status == 403 and refused.value.code == "origin_not_allowed"


def test_the_content_type_check_needs_a_body():
    guard.check_content_type(request("POST"))  # no body: nothing to read
    guard.check_content_type(request("GET", **{"Content-Type": "text/plain"}))


def test_list_settings_follow_the_precedence(abi_home):
    assert load_settings().server.cors_origins == []
    (abi_home / "config.toml").write_text('[server]\ncors_origins = ["https://a.example"]\n'
                                          'model_dirs = ["~/models", "/srv/gguf"]\n')
    settings = load_settings(env={"ABI_HOME": str(abi_home)})
    assert settings.server.cors_origins == ["https://a.example"]
    assert settings.client_model_dirs == [Path("~/models").expanduser(), Path("/srv/gguf")]
    env = {"ABI_HOME": str(abi_home), "ABI_CORS_ORIGINS": "https://b.example, https://c.example,",
           "ABI_ALLOWED_HOSTS": "abi.lan"}
    settings = load_settings(env=env)
    assert settings.server.cors_origins == ["https://b.example", "https://c.example"]
    assert settings.server.allowed_hosts == ["abi.lan"]
    args = build_parser().parse_args(["dash", "--serve", "--cors-origins", "https://d.example", "--model-dirs", "/a,/b"])
    settings = load_settings(flag_overrides(args), env=env)
    assert settings.server.cors_origins == ["https://d.example"]
    assert settings.server.model_dirs == ["/a", "/b"]
    assert settings.server.allowed_hosts == ["abi.lan"]
    # Default: the models folder.
    assert load_settings(env={"ABI_HOME": "/h"}).client_model_dirs == [Path("/h/models")]
    (abi_home / "config.toml").write_text("[server]\nallowed_hosts = 3\n")
    with pytest.raises(ConfigError, match="allowed_hosts: expected a list of strings"):
        load_settings(env={"ABI_HOME": str(abi_home)})
    (abi_home / "config.toml").write_text("")
    settings = load_settings(env={"ABI_HOME": str(abi_home)})
    save_setting(settings, "server.cors_origins", ["https://e.example", 'q"uote'])
    assert load_settings(env={"ABI_HOME": str(abi_home)}).server.cors_origins == ["https://e.example", 'q"uote']


def test_file_inside(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    model = allowed / "sub" / "m.gguf"
    model.write_bytes(b"GGUF")
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(b"GGUF")
    (allowed / "out.gguf").symlink_to(outside)
    (allowed / "in.gguf").symlink_to(model)
    (tmp_path / "alias").symlink_to(allowed, target_is_directory=True)
    assert file_inside(model, [allowed]) == model
    assert file_inside(allowed / "sub" / ".." / "sub" / "m.gguf", [allowed]) == model
    assert file_inside(allowed / "in.gguf", [allowed]) == allowed / "in.gguf"
    # A folder given by a symlinked name covers its real path too; a path is judged by how it
    # is written first, so another name for the folder does not reach it.
    assert file_inside(model, [tmp_path / "alias"]) == model
    assert file_inside(tmp_path / "alias" / "sub" / "m.gguf", [tmp_path / "alias"]) is not None
    assert file_inside(tmp_path / "alias" / "sub" / "m.gguf", [allowed]) is None
    for refused in (outside, allowed / "out.gguf", allowed / ".." / "outside.gguf", allowed / "sub",
                    allowed, allowed / "missing.gguf", Path("/etc/passwd"), Path("a\x00b")):
        assert file_inside(refused, [allowed]) is None, refused
