"""Errors a user can cause: one line on the CLI (exit 2), an OpenAI error object on the API."""

from __future__ import annotations


class AbiError(Exception):
    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(AbiError):
    code = "invalid_request"


class ModelNotFound(AbiError):
    status = 404
    code = "model_not_found"


class ContextLengthExceeded(AbiError):
    code = "context_length_exceeded"


class QueueFull(AbiError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class AuthenticationError(AbiError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Unavailable(AbiError):
    status = 503
    type = "server_error"
    code = "unavailable"


class NoModelLoaded(Unavailable):
    """`default`, a persona or no model named, while no model is loaded (the mock never stands in)."""

    code = "no_model_loaded"


class ModelLoadError(AbiError):
    """A model file that cannot be used: not a GGUF, truncated, unsupported architecture."""

    status = 422
    code = "model_load_failed"


class GenerationError(AbiError):
    status = 500
    type = "server_error"
    code = "generation_failed"
