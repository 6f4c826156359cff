"""Provider errors as the errors our client sees (the mapping is in `upstream_error`).

  400/422 -> 400 (context too long -> context_length_exceeded), 404 -> 404 model_not_found,
  413 -> 413, 429 -> 429 with the provider's Retry-After, 401/403 -> 502 upstream_auth_failed
  (our client's credentials were fine: it is this server's key for the provider that failed,
  and a 401 would make OpenAI clients blame their own key), 5xx and transport failures -> 502
  upstream_error, timeouts -> 504 upstream_timeout, breaker open -> 503 circuit_open.
"""

from __future__ import annotations

import json
from typing import Any

from abi_tui.errors import (
    AbiError,
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    Unavailable,
)


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
