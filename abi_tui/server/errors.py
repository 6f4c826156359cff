"""Every error leaves the server as an OpenAI error object, never an HTML page or a traceback."""

from __future__ import annotations

import logging

from aiohttp import web

from abi_tui.errors import AbiError

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               400: "invalid_request", 415: "unsupported_media_type"}


def error_response(error: AbiError) -> web.Response:
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return web.json_response(error.to_dict(), status=error.status, headers=headers)


def http_error_response(exc: web.HTTPException) -> web.Response:
    status = exc.status
    message = exc.reason if status != 404 else "no such route: see /openapi.json for the API"
    if status == 413:
        message = "request body is over the size limit"
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": _HTTP_CODES.get(status, str(status))}}
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    return web.json_response(body, status=status, headers=headers)


def internal_error_response(exc: BaseException) -> web.Response:
    log.error("unhandled error", exc_info=exc)
    body = {"error": {"message": f"internal server error: {type(exc).__name__}", "type": "server_error",
                      "param": None, "code": "internal_error"}}
    return web.json_response(body, status=500)
