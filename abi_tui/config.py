"""Settings: defaults < config.toml < ABI_* environment < command-line flags.

Every setting lives in one dataclass per section of `config.toml`. A setting's environment
variable is `ABI_<KEY>` for the server section (`ABI_PORT`, `ABI_MAX_QUEUE`, ...) and
`ABI_<SECTION>_<KEY>` elsewhere, except the few named in `ENV_ALIASES`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_PORT = 8420


class ConfigError(Exception):
    """A setting a user wrote is wrong; the message names where and what, on one line."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    model: str | None = None
    token: str | None = None
    admin_token: str | None = None
    insecure_no_auth: bool = False
    max_streams: int = 100
    max_queue: int = 64
    heartbeat_ms: int = 15000
    n_ctx: int = 4096
    n_gpu_layers: int = -1
    threads: int | None = None
    # Sequences decoded together in one llama.cpp context (continuous batching): 8, so that eight
    # clients stream at once without queueing (4 made half of 8 streams wait seconds). The pool
    # halves it for a model whose KV cells for 8 would not fit its memory budget.
    parallel: int = 8
    # llama.cpp's flash attention: "auto" lets llama.cpp decide (on for the CPU). Measured here
    # on the CPU: 3-15% faster on gemma-3 (head size 256), 36% slower on the tiny test model.
    flash_attn: str = "auto"
    max_loaded_models: int = 2
    pool_memory_budget: int | None = None
    keep_alive_s: float | None = None
    max_body_bytes: int = 1024 * 1024
    # Tokens from a fast local model reach the socket at most once per this interval.
    stream_coalesce_ms: float = 1.0
    # A stream whose client accepts no bytes for this long is dropped (0 = never): bounded memory.
    write_timeout_s: float = 30.0
    # Browser-facing guards (docs/SECURITY.md). Origins, besides the server's own, whose pages may
    # call the API (scheme://host[:port]); empty = none.
    cors_origins: list[str] = field(default_factory=list)
    # Host header values accepted besides localhost, 127.0.0.1 and [::1] (on a loopback bind, only
    # those; elsewhere, when set, only these). A name without a port matches any port.
    allowed_hosts: list[str] = field(default_factory=list)
    # Directories whose GGUF files API clients may name by path (besides the cache and the known
    # stores); empty = the models folder ($ABI_HOME/models).
    model_dirs: list[str] = field(default_factory=list)


@dataclass
class ModelsConfig:
    dir: str | None = None
    last_used: str | None = None
    # Loaded at start when no --model is given and no model was used before: the packaged
    # instruct demo (SmolLM2-135M-Instruct). "none" starts without a model.
    default: str = "demo-chat"


@dataclass
class UiConfig:
    theme: str = "abi-dark"


@dataclass
class TelemetryConfig:
    interval_s: float = 1.0
    history: int = 300


@dataclass
class VectorStoreConfig:
    url: str | None = None
    path: str | None = None
    embedding_model: str | None = None
    threshold: float = 0.35


# The remote providers every server knows (`openai/`, `ollama/`, `anthropic/` model ids); an
# `[endpoints.NAME]` table of one of these names tunes the built-in one.
ENDPOINT_KINDS = ("openai", "ollama", "anthropic")
# Model-id prefixes the engine resolves before remote endpoints, so no endpoint may take them.
RESERVED_ENDPOINT_NAMES = ("mock", "default", "auto", "abi", "abbey", "aviva")
# The fields of backends.remote.policy.RemotePolicy a table may set (unset: its defaults).
ENDPOINT_POLICY_KEYS = ("connect_timeout_s", "first_token_timeout_s", "between_tokens_timeout_s", "retries",
                        "retry_backoff_s", "retry_backoff_max_s", "breaker_failures", "breaker_open_s")


@dataclass
class EndpointConfig:
    """One `[endpoints.NAME]` table: a remote provider whose models are `NAME/<model>` (the
    README's configuration section lists the keys). None means the default: for a built-in
    provider its environment variables and public URL, for the policy fields RemotePolicy's."""

    kind: str | None = None  # openai (default), ollama, anthropic
    url: str | None = None
    api_key_env: str | None = None
    max_concurrency: int | None = None  # default: server.max_streams
    list_models: bool = True
    connect_timeout_s: float | None = None
    first_token_timeout_s: float | None = None
    between_tokens_timeout_s: float | None = None
    retries: int | None = None
    retry_backoff_s: float | None = None
    retry_backoff_max_s: float | None = None
    breaker_failures: int | None = None
    breaker_open_s: float | None = None

    def policy_values(self) -> dict[str, Any]:
        """The policy fields this table sets."""
        return {key: getattr(self, key) for key in ENDPOINT_POLICY_KEYS if getattr(self, key) is not None}


@dataclass
class Settings:
    home: Path
    server: ServerConfig = field(default_factory=ServerConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    ui: UiConfig = field(default_factory=UiConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    vector_store: VectorStoreConfig = field(default_factory=VectorStoreConfig)
    # Binding id -> key (a free-form table), and the remote endpoints by name.
    keys: dict[str, str] = field(default_factory=dict)
    endpoints: dict[str, EndpointConfig] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.home / "config.toml"

    @property
    def models_dir(self) -> Path:
        return Path(self.models.dir).expanduser() if self.models.dir else self.home / "models"

    @property
    def vectors_dir(self) -> Path:
        return Path(self.vector_store.path).expanduser() if self.vector_store.path else self.home / "vectors"

    @property
    def chats_db(self) -> Path:
        return self.home / "chats.db"

    @property
    def bench_dir(self) -> Path:
        return self.home / "bench"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def client_model_dirs(self) -> list[Path]:
        """Where a model path sent by an API client may point (`server.model_dirs`)."""
        dirs = [Path(d).expanduser() for d in self.server.model_dirs if d.strip()]
        return dirs or [self.models_dir]

    @property
    def admin_token(self) -> str | None:
        return self.server.admin_token or self.server.token


SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "models": ModelsConfig,
    "ui": UiConfig,
    "telemetry": TelemetryConfig,
    "vector_store": VectorStoreConfig,
}
FREE_TABLES = ("keys", "endpoints")
CHOICES = {"server.flash_attn": ("auto", "on", "off")}
ENV_ALIASES = {"server.token": "ABI_API_TOKEN", "models.dir": "ABI_MODELS_DIR"}


def abi_home(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("ABI_HOME") or "~/.abi").expanduser()


def env_name(dotted: str) -> str:
    if dotted in ENV_ALIASES:
        return ENV_ALIASES[dotted]
    section, key = dotted.split(".", 1)
    return f"ABI_{key.upper()}" if section == "server" else f"ABI_{section.upper()}_{key.upper()}"


def _field_type(cls: type, name: str) -> type:
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return args[0]
    return hint


def coerce(value: Any, kind: type, where: str) -> Any:
    """Convert a TOML or environment value to the setting's type, or raise ConfigError. A list
    setting takes a TOML array of strings, or one comma-separated string (environment, flags)."""
    if typing.get_origin(kind) is list:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            return [item.strip() for item in value if item.strip()]
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if text.lower() in ("", "none", "null") and kind is not bool:
            return None
        try:
            if kind is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return kind(text)
        except ValueError:
            raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def checked(dotted: str, value: Any, where: str) -> Any:
    """A setting with a fixed set of values (CHOICES) holds one of them."""
    choices = CHOICES.get(dotted)
    if choices is not None and value is not None and value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _line_of(text: str, section: str, key: str) -> int | None:
    current = ""
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[\s*([^\]]+?)\s*\]", line)
        if header:
            current = header.group(1)
        elif current == section and re.match(rf"\s*{re.escape(key)}\s*=", line):
            return number
    return None


def _syntax_error(path: Path, text: str, error: tomllib.TOMLDecodeError) -> ConfigError:
    message = str(error)
    match = re.search(r"line (\d+)", message)
    line = int(match.group(1)) if match else None
    key = ""
    if line is not None:
        lines = text.splitlines()
        source = lines[line - 1] if 0 < line <= len(lines) else ""
        found = re.match(r"\s*([\w.\-\"']+)\s*=", source)
        key = f", key {found.group(1)}" if found else ""
    reason = re.sub(r"\s*\(at line.*\)$", "", message)
    where = f"line {line}" if line else "unknown line"
    return ConfigError(f"{path}: {where}{key}: {reason}")


def _where(path: Path | str, text: str, section: str, key: str | None) -> str:
    """`<file>: line N, key section.key`: where every configuration error points."""
    if key is None:
        line = _line_of_header(text, section)
        return f"{path}: line {line or '?'}, key {section}"
    return f"{path}: line {_line_of(text, section, key) or '?'}, key {section}.{key}"


def _line_of_header(text: str, section: str) -> int | None:
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[\s*([^\]]+?)\s*\]", line)
        if header and header.group(1) == section:
            return number
    return _line_of(text, section.rsplit(".", 1)[0], section.rsplit(".", 1)[-1]) if "." in section else None


def endpoint_config(name: str, table: Any, where: Any = None) -> EndpointConfig:
    """One `[endpoints.NAME]` table, checked: ConfigError at `where(key)` (`where(None)`: the
    table itself) for an unknown key, a wrong type or value, a reserved name, a missing url."""
    if where is None:
        where = lambda key: f"config.toml [endpoints.{name}]" + (f".{key}" if key else "")  # noqa: E731
    if not isinstance(table, dict):
        raise ConfigError(f"{where(None)}: expected a table with url = \"...\"")
    if "/" in name or not name:
        raise ConfigError(f"{where(None)}: an endpoint name cannot contain '/'")
    if name in RESERVED_ENDPOINT_NAMES:
        raise ConfigError(f"{where(None)}: '{name}/...' model ids are taken; choose another endpoint name")
    names = [f.name for f in dataclasses.fields(EndpointConfig)]
    config = EndpointConfig()
    for key, value in table.items():
        if key not in names:
            raise ConfigError(f"{where(key)}: unknown key (known: {', '.join(sorted(names))})")
        value = coerce(value, _field_type(EndpointConfig, key), where(key))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low = 1 if key in ("max_concurrency", "breaker_failures") else 0
            if value < low:
                raise ConfigError(f"{where(key)}: expected a number >= {low}, got {value!r}")
        setattr(config, key, value)
    if name in ENDPOINT_KINDS:  # a built-in provider, tuned
        if config.kind not in (None, name):
            raise ConfigError(f"{where('kind')}: the built-in {name} endpoint is of kind {name!r}")
    elif config.kind not in (None, *ENDPOINT_KINDS):
        raise ConfigError(f"{where('kind')}: expected one of {', '.join(ENDPOINT_KINDS)}, got {config.kind!r}")
    if config.url is not None or name not in ENDPOINT_KINDS:
        if not config.url:
            raise ConfigError(f"{where(None)}: url is missing (for example url = \"http://127.0.0.1:8080/v1\")")
        parts = urlsplit(config.url if "://" in config.url or config.kind != "ollama" else f"http://{config.url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{where('url')}: expected an http:// or https:// URL, got {config.url!r}")
    return config


def read_config_file(path: Path) -> tuple[dict[str, Any], str]:
    if not path.exists():
        return {}, ""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(path, text, exc) from None


def load_settings(
    overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> Settings:
    """Build the settings. `overrides` are dotted keys from flags (`server.port`), None = unset."""
    env = dict(os.environ) if env is None else env
    home = abi_home(env)
    settings = Settings(home=home)
    path = settings.config_path
    data, text = read_config_file(path)

    for section, table in data.items():
        if section in FREE_TABLES:
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: line {_line_of(text, '', section)}, key {section}: expected a table")
            if section == "endpoints":
                settings.endpoints = {
                    name: endpoint_config(name, value, lambda key, name=name: _where(path, text, f"endpoints.{name}", key))
                    for name, value in table.items()}
            else:
                settings.keys = table
            continue
        cls = SECTIONS.get(section)
        if cls is None or not isinstance(table, dict):
            known = ", ".join([*SECTIONS, *FREE_TABLES])
            raise ConfigError(f"{path}: line {_line_of(text, section, '') or '?'}, key {section}: unknown section (known: {known})")
        target = getattr(settings, section)
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in table.items():
            where = _where(path, text, section, key)
            if key not in names:
                raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(names))})")
            setattr(target, key, checked(f"{section}.{key}", coerce(value, _field_type(cls, key), where), where))

    for section, cls in SECTIONS.items():
        target = getattr(settings, section)
        for f in dataclasses.fields(cls):
            dotted = f"{section}.{f.name}"
            name = env_name(dotted)
            if name in env:
                where = f"environment {name}"
                setattr(target, f.name, checked(dotted, coerce(env[name], _field_type(cls, f.name), where), where))
            if overrides and overrides.get(dotted) is not None:
                where = f"--{f.name.replace('_', '-')}"
                setattr(target, f.name, checked(dotted, coerce(overrides[dotted], _field_type(cls, f.name), where), where))
    return settings


def save_setting(settings: Settings, dotted: str, value: Any) -> None:
    """Persist one setting in config.toml through tomlkit, which keeps the rest of the file as
    written: comments, blank lines, key order, quoting. A file that does not parse is left
    alone (ConfigError, with its line)."""
    import tomlkit  # deferred: only a save needs it
    from tomlkit.exceptions import ParseError

    section, key = dotted.split(".", 1)
    path = settings.config_path
    _, text = read_config_file(path)  # a file tomllib refuses is reported the usual way
    try:
        document = tomlkit.parse(text)
    except ParseError as exc:
        raise ConfigError(f"{path}: line {exc.line}: {exc}") from None
    table = document.get(section)
    if table is None:
        table = tomlkit.table()
        document[section] = table
    elif not isinstance(table, dict):
        raise ConfigError(f"{_where(path, text, section, None)}: expected a table")
    table[key] = list(value) if isinstance(value, tuple) else value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomlkit.dumps(document), encoding="utf-8")
    os.replace(tmp, path)
    target = getattr(settings, section)
    if isinstance(target, dict):
        target[key] = value
    else:
        setattr(target, key, value)
