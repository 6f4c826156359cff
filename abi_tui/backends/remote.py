"""Remote inference backends: what OpenAI-compatible, Ollama and Anthropic share.

A remote request always streams from its provider, whatever our client asked for, so the
timeouts mean the same thing everywhere: connect 10 s, first token 60 s, between tokens 30 s
(only tokens, reasoning included, move these deadlines: keep-alives and pings do not).

Retries happen only before the first token reached our client, with exponential backoff and
jitter: connection failures, 5xx, 408, a stream that broke early. Not retried: 4xx, 429 (the
client gets the provider's Retry-After), and a first-token timeout (the provider took the
request and went silent; asking again doubles the wait and the load).

A circuit breaker per endpoint counts consecutive failed attempts that say the provider is
unwell (transport errors, timeouts, 5xx; not 4xx, 429, a rejected key or our client leaving):
5 open it for 30 s, during which requests get 503 circuit_open with Retry-After at once; then
one probe request goes through, and its first token closes the breaker.

Provider errors become AbiErrors carrying the provider's own message:
  400/422 -> 400 (context too long -> context_length_exceeded), 404 -> 404 model_not_found,
  413 -> 413, 429 -> 429 with the provider's Retry-After, 401/403 -> 502 upstream_auth_failed
  (our client's credentials were fine: it is this server's key for the provider that failed,
  and a 401 would make OpenAI clients blame their own key), 5xx and transport failures -> 502
  upstream_error, timeouts -> 504 upstream_timeout, breaker open -> 503 circuit_open.

Endpoints come from the environment and `[endpoints.NAME]` tables in config.toml:
  openai/<model>     OPENAI_BASE_URL (default the public API), OPENAI_API_KEY
  ollama/<model>     OLLAMA_HOST (default http://127.0.0.1:11434)
  anthropic/<model>  ANTHROPIC_BASE_URL (default the public API), ANTHROPIC_API_KEY
  NAME/<model>       [endpoints.NAME] url = "http://host:8080/v1", api_key_env = "VAR",
                     kind = "openai" (default) | "ollama" | "anthropic"
Any table may also set max_concurrency, list_models (true) and the RemotePolicy fields
(connect_timeout_s, first_token_timeout_s, between_tokens_timeout_s, retries, retry_backoff_s,
retry_backoff_max_s, breaker_failures, breaker_open_s). A table named after a built-in
provider tunes it; the provider's environment variables still win over its `url`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

from abi_tui.backends.base import CancelFlag, GenerationRequest, Prepared, TokenChannel, Usage
from abi_tui.errors import (
    AbiError,
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    Unavailable,
)

if TYPE_CHECKING:
    from abi_tui.backends.base import Backend
    from abi_tui.backends.engine import InferenceEngine
    from abi_tui.config import Settings

log = logging.getLogger(__name__)

DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_ANTHROPIC_URL = "https://api.anthropic.com"
DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"
KINDS = ("openai", "ollama", "anthropic")
# Prefixes the engine resolves before remote factories, so an endpoint cannot use them.
RESERVED_NAMES = ("mock", "default", "auto", "abi", "abbey", "aviva")

LIST_TIMEOUT_S = 2.0      # /v1/models asks each endpoint with this budget...
LIST_TTL_S = 60.0         # ...keeps the answer this long...
LIST_FAILURE_TTL_S = 10.0  # ...and remembers an unreachable endpoint for this long
CANCEL_POLL_S = 0.05      # CancelFlag is a plain flag: how often a stream looks at it
MAX_LINE_BYTES = 8 * 1024 * 1024
MAX_ERROR_BODY = 64 * 1024
MAX_BACKENDS = 256


# ------------------------------------------------------------------------------------ errors
class UpstreamError(AbiError):
    """The provider failed or could not be reached: 502 unless said otherwise."""

    status = 502
    type = "server_error"
    code = "upstream_error"

    def __init__(self, message: str, *, retryable: bool = False, failure: bool = True, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retryable = retryable  # worth another attempt if nothing was streamed yet
        self.failure = failure      # counts against the endpoint's circuit breaker


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamRateLimited(AbiError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class CircuitOpen(Unavailable):
    code = "circuit_open"


class EndpointMisconfigured(AbiError):
    """An `[endpoints.NAME]` table that cannot be used; said when the endpoint is asked for,
    since a server must not refuse to start over one bad table."""

    status = 500
    type = "server_error"
    code = "endpoint_misconfigured"


def provider_message(body: bytes) -> tuple[str, str | None, str | None, str | None]:
    """(message, code, type, param) from any provider's error body.

    OpenAI: {"error": {"message", "type", "code", "param"}}; Ollama: {"error": "..."};
    Anthropic: {"type": "error", "error": {"type", "message"}}; vLLM (old): {"message", "code"}.
    """
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return (text[:500] or "(empty body)"), None, None, None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, str):
            return error, None, None, None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            code = error.get("code")
            param = error.get("param")
            return (error["message"], code if isinstance(code, str) else None,
                    error.get("type") if isinstance(error.get("type"), str) else None,
                    param if isinstance(param, str) else None)
    return text[:500], None, None, None


def retry_after_of(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` (OpenAI) or `Retry-After` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def upstream_error(name: str, status: int, message: str, *, code: str | None = None, param: str | None = None,
                   retry_after: float | None = None, in_stream: bool = False) -> AbiError:
    """A provider's error status and message as the error our client sees."""
    text = f"{name}: {message}" if in_stream else f"{name} answered {status}: {message}"
    if status == 429:
        return UpstreamRateLimited(text, retry_after=retry_after if retry_after is not None else 1.0)
    if status in (401, 403):
        return UpstreamError(text, code="upstream_auth_failed", failure=False)
    if status == 404:
        return ModelNotFound(text, param="model")
    if status == 408:
        return UpstreamTimeout(text, retryable=True)
    if status == 413:
        return InvalidRequest(text, status=413, code="payload_too_large")
    if code == "context_length_exceeded" or "prompt is too long" in message:
        return ContextLengthExceeded(text, param="messages")
    if 400 <= status < 500:
        return InvalidRequest(text, param=param, code=code or "invalid_request")
    return UpstreamError(text, retryable=True, retry_after=retry_after)


def is_failure(error: AbiError) -> bool:
    return isinstance(error, UpstreamError) and error.failure


# Error types that providers send inside a stream, where no HTTP status says what went wrong.
_TYPE_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
                "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429,
                "api_error": 500, "server_error": 500, "overloaded_error": 529}


def stream_error(name: str, message: str, error_type: str | None, code: str | None = None,
                 param: str | None = None) -> AbiError:
    """An error event in the middle of a provider's stream, mapped like an HTTP error."""
    return upstream_error(name, _TYPE_STATUS.get(error_type or "", 500), message, code=code, param=param,
                          in_stream=True)


# ----------------------------------------------------------------------------------- policy
@dataclass(frozen=True)
class RemotePolicy:
    """Timeouts, retries and breaker settings of one endpoint; connect 10 s, first token 60 s,
    between tokens 30 s, retries only before the first token, a breaker per endpoint."""

    connect_timeout_s: float = 10.0
    first_token_timeout_s: float = 60.0
    between_tokens_timeout_s: float = 30.0
    retries: int = 2            # extra attempts, only before the first token
    retry_backoff_s: float = 0.5  # first backoff; doubles per attempt, with jitter
    retry_backoff_max_s: float = 8.0
    breaker_failures: int = 5
    breaker_open_s: float = 30.0

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.retry_backoff_max_s, self.retry_backoff_s * 2 ** (attempt - 1))
        delay *= 0.5 + random.random() / 2  # jitter: retries of many streams do not land together
        if retry_after is not None and retry_after <= self.retry_backoff_max_s:
            delay = max(delay, retry_after)
        return delay


POLICY_KEYS = {f.name for f in fields(RemotePolicy)}
ENDPOINT_KEYS = {"url", "api_key_env", "kind", "max_concurrency", "list_models", *POLICY_KEYS}


# ---------------------------------------------------------------------------------- breaker
class CircuitBreaker:
    """closed -> (N consecutive failures) -> open for `open_s` -> half-open: one probe request;
    its success closes the breaker, its failure opens it for another window."""

    def __init__(self, name: str, failures: int = 5, open_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.threshold = max(1, failures)
        self.open_s = open_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self.last_error = ""

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "open" if self.clock() - self.opened_at < self.open_s else "half_open"

    @property
    def retry_after(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(1.0, self.open_s - (self.clock() - self.opened_at))

    def _rejection(self) -> CircuitOpen:
        return CircuitOpen(f"{self.name} is unavailable: {self.failures} failures in a row "
                           f"(last: {self.last_error}); the circuit breaker lets requests through again "
                           f"in {self.retry_after:.0f} s", retry_after=self.retry_after)

    def check(self) -> None:
        """Raise CircuitOpen when no request may go now (takes nothing)."""
        state = self.state
        if state == "open" or (state == "half_open" and self.probing):
            raise self._rejection()

    def acquire(self) -> bool:
        """Before an attempt: raise CircuitOpen, or return True when this attempt is the probe."""
        self.check()
        if self.state == "half_open":
            self.probing = True
            return True
        return False

    def record_success(self) -> None:
        if self.opened_at is not None:
            log.info("%s: circuit breaker closed", self.name)
        self.failures, self.opened_at, self.probing = 0, None, False

    def record_failure(self, message: str, probe: bool) -> None:
        self.failures += 1
        self.last_error = message
        if probe or self.failures >= self.threshold:
            if self.opened_at is None or probe:
                log.warning("%s: circuit breaker open for %.0f s after %d failures: %s",
                            self.name, self.open_s, self.failures, message)
            self.opened_at, self.probing = self.clock(), False

    def release(self, probe: bool) -> None:
        """An attempt that ended with no verdict on the provider's health (cancelled, 4xx)."""
        if probe:
            self.probing = False

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "failures": self.failures,
                "retry_after_s": round(self.retry_after, 1) if self.state != "closed" else 0}


# -------------------------------------------------------------------------------- endpoints
@dataclass
class Endpoint:
    """One provider address: the model-id prefix, its protocol, and its health."""

    name: str
    kind: str
    url: str
    api_key_env: str | None = None
    policy: RemotePolicy = field(default_factory=RemotePolicy)
    capacity: int = 100
    list_models: bool = True
    builtin: bool = False
    breaker: CircuitBreaker = field(init=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.breaker = CircuitBreaker(self.name, self.policy.breaker_failures, self.policy.breaker_open_s)

    def api_key(self) -> str | None:
        # Read per request: a rotated key in the environment of an embedding program is seen.
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None

    @property
    def public(self) -> bool:
        return self.url in (DEFAULT_OPENAI_URL, DEFAULT_ANTHROPIC_URL)


def ollama_url(host: str) -> str:
    """OLLAMA_HOST as Ollama reads it: scheme defaults to http, port to 11434 (80/443 when a
    scheme is given), `0.0.0.0` (a bind address) means this machine."""
    host = host.strip()
    explicit = "://" in host
    parts = urlsplit(host if explicit else f"http://{host}")
    hostname = parts.hostname or "127.0.0.1"
    if hostname in ("0.0.0.0", "::"):
        hostname = "127.0.0.1"
    port = parts.port or (11434 if not explicit else 443 if parts.scheme == "https" else 80)
    shown = f"[{hostname}]" if ":" in hostname else hostname
    return f"{parts.scheme}://{shown}:{port}{parts.path.rstrip('/')}"


def _coerce_policy(table: dict[str, Any], where: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in POLICY_KEYS & set(table):
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{where}.{key}: expected a number >= 0, got {value!r}")
        values[key] = int(value) if key in ("retries", "breaker_failures") else float(value)
    return values


def endpoint_from_table(name: str, table: Any, env: dict[str, str], capacity: int) -> Endpoint:
    """One `[endpoints.NAME]` table (or a built-in provider tuned by one); ValueError names the key."""
    where = f"config.toml [endpoints.{name}]"
    if not isinstance(table, dict):
        raise ValueError(f"{where}: expected a table with url = \"...\"")
    unknown = set(table) - ENDPOINT_KEYS
    if unknown:
        raise ValueError(f"{where}.{sorted(unknown)[0]}: unknown key (known: {', '.join(sorted(ENDPOINT_KEYS))})")
    if "/" in name or not name:
        raise ValueError(f"{where}: an endpoint name cannot contain '/'")
    if name in RESERVED_NAMES:
        raise ValueError(f"{where}: '{name}/...' model ids are taken; choose another endpoint name")
    for key in ("url", "api_key_env", "kind"):
        if key in table and not isinstance(table[key], str):
            raise ValueError(f"{where}.{key}: expected a string, got {table[key]!r}")
    policy = RemotePolicy(**_coerce_policy(table, where))
    concurrency = table.get("max_concurrency", capacity)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"{where}.max_concurrency: expected an integer >= 1, got {concurrency!r}")
    list_models = table.get("list_models", True)
    if not isinstance(list_models, bool):
        raise ValueError(f"{where}.list_models: expected true or false, got {list_models!r}")

    if name in KINDS:  # a built-in provider, tuned by the table; its environment wins
        if table.get("kind", name) != name:
            raise ValueError(f"{where}.kind: the built-in {name} endpoint is of kind {name!r}")
        url, key_env = {
            "openai": (env.get("OPENAI_BASE_URL") or table.get("url") or DEFAULT_OPENAI_URL, "OPENAI_API_KEY"),
            "ollama": (ollama_url(env.get("OLLAMA_HOST") or table.get("url") or DEFAULT_OLLAMA_HOST), None),
            "anthropic": (env.get("ANTHROPIC_BASE_URL") or table.get("url") or DEFAULT_ANTHROPIC_URL,
                          "ANTHROPIC_API_KEY"),
        }[name]
        return Endpoint(name, name, url, table.get("api_key_env", key_env), policy, concurrency, list_models,
                        builtin=True)

    kind = table.get("kind", "openai")
    if kind not in KINDS:
        raise ValueError(f"{where}.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    url = table.get("url")
    if not url:
        raise ValueError(f"{where}: url is missing (for example url = \"http://127.0.0.1:8080/v1\")")
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise ValueError(f"{where}.url: expected an http:// or https:// URL, got {url!r}")
    if kind == "ollama":
        url = ollama_url(url)
    return Endpoint(name, kind, url, table.get("api_key_env"), policy, concurrency, list_models)


def endpoints_from_settings(settings: Settings, env: dict[str, str] | None = None,
                            policy: RemotePolicy | None = None) -> tuple[dict[str, Endpoint], dict[str, str]]:
    """(endpoints by prefix, configuration problems by prefix). `policy` replaces the defaults
    that a table does not set (tests use it for short timeouts)."""
    env = dict(os.environ) if env is None else env
    capacity = settings.server.max_streams
    tables: dict[str, Any] = {kind: {} for kind in KINDS}
    tables.update(settings.endpoints)
    endpoints: dict[str, Endpoint] = {}
    problems: dict[str, str] = {}
    for name, table in tables.items():
        try:
            endpoint = endpoint_from_table(str(name), table, env, capacity)
        except ValueError as exc:
            problems[str(name)] = str(exc)
            log.error("%s", exc)
            continue
        if policy is not None:
            explicit = _coerce_policy(table, "") if isinstance(table, dict) else {}
            endpoint.policy = replace(policy, **explicit)
            endpoint.breaker = CircuitBreaker(endpoint.name, endpoint.policy.breaker_failures,
                                              endpoint.policy.breaker_open_s)
        endpoints[endpoint.name] = endpoint
    return endpoints, problems


# ------------------------------------------------------------------------------- streaming
@dataclass
class UpstreamCall:
    """What prepare() decided to send: a path under the endpoint's URL and a JSON body."""

    path: str
    body: dict[str, Any]


@dataclass
class Delta:
    """One thing a provider's stream said."""

    text: str = ""
    finish: str | None = None
    usage: Usage | None = None
    error: AbiError | None = None
    done: bool = False
    alive: bool = False  # a token that is not answer text (reasoning): the model is generating


class LineReader:
    """Lines from a response body. Written here because aiohttp's readline() refuses lines over
    its buffer size, and a provider's usage or error line may be long."""

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content
        self._buffer = bytearray()

    async def readline(self) -> bytes | None:
        """The next line without its end (\\n or \\r\\n); None at the end of the body."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                return line.removesuffix(b"\r")
            chunk = await self._content.readany()
            if not chunk:
                if self._buffer:
                    line = bytes(self._buffer)
                    self._buffer.clear()
                    return line.removesuffix(b"\r")
                return None
            self._buffer += chunk
            if len(self._buffer) > MAX_LINE_BYTES:
                raise UpstreamError("the provider sent a line over 8 MiB")


class SseParser:
    """Server-sent events from lines: (event, data) when a blank line ends an event."""

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: bytes) -> tuple[str | None, str] | None:
        text = line.decode("utf-8", "replace")
        if not text:
            if not self._data and self._event is None:
                return None
            event, data = self._event, "\n".join(self._data)
            self._event, self._data = None, []
            return event, data
        if text.startswith(":"):
            return None  # a comment: keep-alives
        name, _, value = text.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


def estimate_tokens(text: str) -> int:
    """No tokenizer here: about four characters a token, until the provider reports usage."""
    return max(1, (len(text) + 3) // 4) if text else 0


def estimate_prompt_tokens(request: GenerationRequest) -> int:
    if request.messages is not None:
        return sum(4 + estimate_tokens(m.get("content", "")) for m in request.messages)
    return estimate_tokens(request.prompt or "")


@dataclass
class _Progress:
    started: bool = False  # a token reached our client: no more retries
    healthy: bool = False  # this attempt produced tokens: the breaker has heard of its success
    finish: str | None = None
    usage: Usage | None = None


async def _cancel_when_flagged(cancel: CancelFlag, task: asyncio.Task) -> None:
    # The engine only sets a flag; cancelling the task closes the upstream response promptly,
    # also while it waits for a first token that may never come.
    while not task.done():
        if cancel.is_set:
            task.cancel()
            return
        await asyncio.sleep(CANCEL_POLL_S)


class RemoteBackend:
    """A model behind an HTTP provider; subclasses speak the provider's protocol."""

    kind = "remote"

    def __init__(self, model_id: str, endpoint: Endpoint, registry: RemoteRegistry) -> None:
        self.model_id = model_id
        self.model = model_id.split("/", 1)[1]
        self.endpoint = endpoint
        self.capacity = endpoint.capacity
        self.registry = registry

    # provider-specific ------------------------------------------------------------------------
    def build(self, request: GenerationRequest) -> UpstreamCall:
        raise NotImplementedError

    def headers(self) -> dict[str, str]:
        raise NotImplementedError

    def parse(self, call: UpstreamCall) -> Callable[[bytes], list[Delta]]:
        """A fresh parser for one response: a line in, what it said out."""
        raise NotImplementedError

    def max_tokens(self, request: GenerationRequest) -> int:
        return request.params.max_tokens or 0  # 0: the provider's own limit

    # Backend protocol ---------------------------------------------------------------------
    async def prepare(self, request: GenerationRequest) -> Prepared:
        if not self.model:
            raise ModelNotFound(f"name a model after the prefix: {self.endpoint.name}/<model>", param="model")
        self.endpoint.breaker.check()  # a real 503 with Retry-After, before any response starts
        self.check_key()
        call = self.build(request)
        return Prepared(request, prompt_tokens=estimate_prompt_tokens(request),
                        max_tokens=self.max_tokens(request), payload=call)

    def check_key(self) -> None:
        endpoint = self.endpoint
        if endpoint.public and endpoint.api_key_env and not endpoint.api_key():
            raise UpstreamError(f"{endpoint.api_key_env} is not set: export it before starting abi to use "
                                f"{endpoint.name}/ models", code="upstream_auth_failed", failure=False)

    def start(self, prepared: Prepared, channel: TokenChannel, cancel: CancelFlag) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run(prepared, channel, cancel), name=f"remote {self.model_id}")
        channel.extra["task"] = task
        channel.extra["cancel_watch"] = loop.create_task(_cancel_when_flagged(cancel, task))

    def describe(self) -> dict[str, Any]:
        return {"id": self.model_id, "kind": self.kind, "endpoint": self.endpoint.name, "url": self.endpoint.url,
                "breaker": self.endpoint.breaker.to_dict()}

    # the stream ---------------------------------------------------------------------------
    async def _run(self, prepared: Prepared, channel: TokenChannel, cancel: CancelFlag) -> None:
        call: UpstreamCall = prepared.payload
        policy = self.endpoint.policy
        breaker = self.endpoint.breaker
        progress = _Progress()
        attempt = 0
        probe = False
        try:
            while not cancel.is_set:
                try:
                    probe = breaker.acquire()
                except CircuitOpen as exc:
                    channel.close(None, exc)
                    return
                try:
                    await self._attempt(call, channel, progress)
                except AbiError as error:
                    probe = probe and not progress.healthy  # a streaming probe already closed the breaker
                    if is_failure(error):
                        breaker.record_failure(error.message, probe)
                    else:
                        breaker.release(probe)
                    probe = False
                    retry = (not progress.started and getattr(error, "retryable", False)
                             and attempt < policy.retries and breaker.state == "closed" and not cancel.is_set)
                    if not retry:
                        channel.close(None, error)
                        return
                    attempt += 1
                    delay = policy.backoff(attempt, error.retry_after)
                    log.info("%s: attempt %d failed (%s); retrying in %.2f s", self.model_id, attempt,
                             error.message, delay)
                    await asyncio.sleep(delay)
                    continue
                if not progress.healthy:
                    breaker.record_success()  # an empty answer is still a healthy provider
                probe = False
                if progress.usage is not None:
                    channel.usage = progress.usage
                channel.close(progress.finish or "stop")
                return
            channel.close("cancelled")
        except asyncio.CancelledError:
            breaker.release(probe)
            channel.close("cancelled")
        except Exception as exc:  # a bug: end the stream with an error instead of hanging it
            log.exception("remote stream %s failed", self.model_id)
            breaker.release(probe)
            channel.close(None, UpstreamError(f"{self.endpoint.name}: internal error: {type(exc).__name__}"))

    async def _attempt(self, call: UpstreamCall, channel: TokenChannel, progress: _Progress) -> None:
        progress.healthy, progress.finish, progress.usage = False, None, None
        endpoint = self.endpoint
        policy = endpoint.policy
        name = endpoint.name
        url = endpoint.url + call.path
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.first_token_timeout_s
        session = self.registry.session()
        timeout = aiohttp.ClientTimeout(total=None, connect=policy.connect_timeout_s, sock_read=None)
        try:
            async with asyncio.timeout_at(deadline):
                response = await session.post(url, json=call.body, headers=self.headers(), timeout=timeout)
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamTimeout(f"{name}: no connection to {endpoint.url} within {policy.connect_timeout_s:g} s",
                                  retryable=True) from None
        except TimeoutError:
            raise self._first_token_timeout() from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{name}: cannot reach {endpoint.url}: {exc}", retryable=True) from None
        clean = False
        try:
            if response.status >= 400:
                try:
                    async with asyncio.timeout_at(deadline):
                        body = await response.content.read(MAX_ERROR_BODY)
                except (TimeoutError, aiohttp.ClientError):
                    body = b""
                message, code, _, param = provider_message(body)
                raise upstream_error(name, response.status, message, code=code, param=param,
                                     retry_after=retry_after_of(response.headers))
            parse = self.parse(call)
            reader = LineReader(response.content)
            # Only tokens move the deadline: keep-alive comments and pings (an abi upstream sends
            # heartbeats while it is stuck) must not keep a silent model alive forever.
            ticking = False
            done = False
            while not done:
                try:
                    async with asyncio.timeout_at(deadline):
                        line = await reader.readline()
                except TimeoutError:
                    if ticking:
                        raise UpstreamTimeout(f"{name}: no token for {policy.between_tokens_timeout_s:g} s "
                                              "in the middle of the answer") from None
                    raise self._first_token_timeout() from None
                except (aiohttp.ClientError, ConnectionError) as exc:
                    raise UpstreamError(f"{name}: the connection broke during the answer: {exc}",
                                        retryable=True) from None
                if line is None:
                    if progress.finish is not None:
                        break  # some servers end the body without a final marker
                    raise UpstreamError(f"{name}: the stream ended before the answer finished", retryable=True)
                for delta in parse(line):
                    if delta.error is not None:
                        raise delta.error
                    if delta.text or delta.alive:
                        ticking = True
                        deadline = loop.time() + policy.between_tokens_timeout_s
                        if not progress.healthy:
                            progress.healthy = True
                            endpoint.breaker.record_success()
                    if delta.text:
                        progress.started = True
                        channel.put(delta.text)
                    if delta.finish is not None:
                        progress.finish = delta.finish
                    if delta.usage is not None:
                        progress.usage = delta.usage
                    done = done or delta.done
            clean = True
        finally:
            # release() keeps a finished connection for reuse; close() drops it, which is what
            # tells the provider that we stopped listening (cancellation, errors).
            if clean:
                response.release()
            else:
                response.close()

    def _first_token_timeout(self) -> UpstreamTimeout:
        policy = self.endpoint.policy
        return UpstreamTimeout(f"{self.endpoint.name}: no first token within {policy.first_token_timeout_s:g} s")


# -------------------------------------------------------------------------------- registry
def _backend_class(kind: str) -> type[RemoteBackend]:
    if kind == "ollama":
        from abi_tui.backends.ollama import OllamaBackend
        return OllamaBackend
    if kind == "anthropic":
        from abi_tui.backends.anthropic import AnthropicBackend
        return AnthropicBackend
    from abi_tui.backends.openai_compat import OpenAICompatBackend
    return OpenAICompatBackend


class RemoteRegistry:
    """The endpoints of one server, one backend per model id, and one HTTP session for all."""

    def __init__(self, settings: Settings, policy: RemotePolicy | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.endpoints, self.problems = endpoints_from_settings(settings, env, policy)
        self.backends: dict[str, RemoteBackend] = {}
        self._session: aiohttp.ClientSession | None = None

    @property
    def prefixes(self) -> list[str]:
        return [*self.endpoints, *self.problems]

    def backend(self, model_id: str) -> Backend:
        backend = self.backends.get(model_id)
        if backend is not None:
            return backend
        prefix = model_id.split("/", 1)[0]
        if prefix in self.problems:
            raise EndpointMisconfigured(f"endpoint {prefix!r} is misconfigured: {self.problems[prefix]}")
        endpoint = self.endpoints[prefix]
        backend = _backend_class(endpoint.kind)(model_id, endpoint, self)
        if len(self.backends) >= MAX_BACKENDS:  # model ids come from clients: keep this bounded
            self.backends.clear()
        self.backends[model_id] = backend
        return backend

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No pool limit: the scheduler already bounds concurrent streams per endpoint.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), trust_env=True,
                                                  timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def list_models(self) -> list[str]:
        return await list_remote_models(self.settings, endpoints=self.endpoints)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def register_remote_backends(engine: InferenceEngine, settings: Settings, policy: RemotePolicy | None = None,
                             env: dict[str, str] | None = None) -> RemoteRegistry:
    """Give the engine a factory per prefix: openai, ollama, anthropic and each configured
    endpoint name. Each model id gets one backend; each endpoint one breaker."""
    registry = RemoteRegistry(settings, policy, env)
    for prefix in registry.prefixes:
        engine.remote_factories[prefix] = registry.backend
    return registry


# ------------------------------------------------------------------------------ model lists
_MODEL_CACHE: dict[tuple[str, str, str], tuple[float, list[str]]] = {}


def _listing(endpoint: Endpoint) -> tuple[str, dict[str, str]] | None:
    """(URL, headers) that lists an endpoint's models, or None when it is not in use."""
    key = endpoint.api_key()
    if endpoint.kind == "ollama":
        return endpoint.url + "/api/tags", ({"Authorization": f"Bearer {key}"} if key else {})
    if endpoint.kind == "anthropic":
        if endpoint.public and not key:
            return None
        return endpoint.url + "/v1/models", {"x-api-key": key or "", "anthropic-version": "2023-06-01"}
    if endpoint.public and not key:
        return None  # the public OpenAI API without a key: nothing to list
    return endpoint.url + "/models", ({"Authorization": f"Bearer {key}"} if key else {})


async def _ask_models(session: aiohttp.ClientSession, endpoint: Endpoint, url: str, headers: dict[str, str],
                      timeout_s: float) -> list[str]:
    try:
        async with asyncio.timeout(timeout_s):
            async with session.get(url, headers=headers) as response:
                if response.status != 200:
                    log.info("%s: listing models answered %d", endpoint.name, response.status)
                    raise ValueError
                data = await response.json(content_type=None)
        if endpoint.kind == "ollama":
            names = [m.get("name") or m.get("model") for m in data.get("models", [])]
        else:
            names = [m.get("id") for m in data.get("data", [])]
        return [f"{endpoint.name}/{n}" for n in names if isinstance(n, str) and n]
    except (TimeoutError, aiohttp.ClientError, ValueError, AttributeError, TypeError) as exc:
        log.debug("%s: cannot list models at %s: %r", endpoint.name, url, exc)
        raise ValueError(endpoint.name) from None


async def list_remote_models(settings: Settings, *, endpoints: dict[str, Endpoint] | None = None,
                             timeout_s: float = LIST_TIMEOUT_S) -> list[str]:
    """`<prefix>/<model>` for what each configured endpoint serves, asked concurrently with a
    short timeout; answers are cached (failures briefly), so an unreachable endpoint costs at
    most `timeout_s` now and nothing on the next calls."""
    if endpoints is None:
        endpoints, _ = endpoints_from_settings(settings)
    now = time.monotonic()
    results: dict[str, list[str]] = {}
    asks: dict[str, tuple[tuple[str, str, str], asyncio.Future[list[str]]]] = {}
    session: aiohttp.ClientSession | None = None
    try:
        for endpoint in endpoints.values():
            listing = _listing(endpoint) if endpoint.list_models else None
            if listing is None:
                continue
            url, headers = listing
            key = (endpoint.name, endpoint.kind, url)
            cached = _MODEL_CACHE.get(key)
            if cached is not None and cached[0] > now:
                results[endpoint.name] = cached[1]
                continue
            if session is None:
                session = aiohttp.ClientSession(trust_env=True)
            asks[endpoint.name] = (key, asyncio.ensure_future(_ask_models(session, endpoint, url, headers, timeout_s)))
        if asks:
            await asyncio.wait([future for _, future in asks.values()])
        for name, (key, future) in asks.items():
            if future.exception() is None:
                results[name] = future.result()
                _MODEL_CACHE[key] = (time.monotonic() + LIST_TTL_S, results[name])
            else:
                _MODEL_CACHE[key] = (time.monotonic() + LIST_FAILURE_TTL_S, [])
    finally:
        if session is not None:
            await session.close()
    return [model for name in endpoints if name in results for model in results[name]]


def clear_model_cache() -> None:
    _MODEL_CACHE.clear()
