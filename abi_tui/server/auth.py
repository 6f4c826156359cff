"""Bearer-token auth: constant-time comparison; `/health` open; `/admin/*` needs the
admin token; WebSockets may also send the token as `?token=` or subprotocol `bearer.<token>`."""

from __future__ import annotations

import hmac

from aiohttp import web

from abi_tui.errors import AuthenticationError

OPEN_PATHS = frozenset({"/health"})


def _matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def presented_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        # Exactly "Bearer <token>": a lowercase scheme or padding is refused, not guessed at.
        return token if scheme == "Bearer" and token and token == token.strip() else None
    if request.path.startswith("/api/stream/ws") or request.path == "/api/events":
        if "token" in request.query:
            return request.query["token"]
        for protocol in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            protocol = protocol.strip()
            if protocol.startswith("bearer."):
                return protocol[len("bearer."):]
    return None


def is_admin_route(request: web.Request) -> bool:
    """By the path as sent and by the route it resolved to: whatever spelling of the path
    reaches an /admin/ handler (percent-escapes, say) needs the admin token."""
    if request.path.startswith("/admin/"):
        return True
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical.startswith("/admin/")


def check(request: web.Request, token: str | None, admin_token: str | None) -> None:
    admin = is_admin_route(request)
    if request.path in OPEN_PATHS and not admin:
        return
    needed = admin_token if admin else token
    if not needed:
        return
    given = presented_token(request)
    if given is None:
        raise AuthenticationError("missing API token: send 'Authorization: Bearer <token>'")
    if not _matches(given, needed):
        raise AuthenticationError(f"invalid {'admin token' if admin else 'API token'}")
