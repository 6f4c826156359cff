"""What a web page in the user's browser must not be able to do with this server (docs/SECURITY.md).

Checked for every request before the token and before the body is read:

- Host: on a loopback bind only `localhost`, `127.0.0.1`, `[::1]` (any port) and
  `server.allowed_hosts`; elsewhere `server.allowed_hosts` when set. A page that rebinds its own
  DNS name to 127.0.0.1 sends its own name as Host, so it is refused here.
- Origin: a request that carries one (browsers send it on every cross-origin request and on
  every POST) is served only for the server's own origin and `server.cors_origins`. Those get
  CORS headers and answered preflights; every other origin gets 403, preflight or not.
- Content type: a body on anything but GET/HEAD/OPTIONS must be `application/json`. The three
  content types a page may send without a preflight (text/plain, form-urlencoded, multipart)
  and a body without a type get 415.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from abi_tui.config import Settings
from abi_tui.errors import AbiError
from abi_tui.server.main import is_loopback

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
CORS_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type"
CORS_EXPOSE = "X-Request-Id, X-Download-Id, Retry-After"
CORS_MAX_AGE_S = 600
# The allowed origin a request carries: its responses get CORS headers.
ALLOWED_ORIGIN = web.RequestKey("abi_allowed_origin", str) if hasattr(web, "RequestKey") else "abi_allowed_origin"


class Forbidden(AbiError):
    status = 403
    code = "forbidden"


class UnsupportedMediaType(AbiError):
    status = 415
    code = "unsupported_media_type"


def split_host(value: str) -> tuple[str, int | None] | None:
    """`name[:port]` / `[v6][:port]` to (lower-case name without brackets, port); None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else ""
    elif value.count(":") == 1:
        name, _, port_text = value.partition(":")
    elif ":" in value:
        return None  # an IPv6 address without brackets is not a Host header
    else:
        name, port_text = value, ""
    name = name.rstrip(".")
    if not name:
        return None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        return name, int(port_text)
    return name, None


def _host_matches(host: tuple[str, int | None], entry: str) -> bool:
    wanted = split_host(entry)
    if wanted is None:
        return False
    return host[0] == wanted[0] and (wanted[1] is None or wanted[1] == host[1])


def check_host(request: web.Request, settings: Settings) -> None:
    value = request.headers.get("Host")
    if value is None:
        return  # HTTP/1.0 without Host: not a browser
    host = split_host(value)
    allowed = settings.server.allowed_hosts
    if host is not None and any(_host_matches(host, entry) for entry in allowed):
        return
    if is_loopback(settings.server.host):
        if host is not None and (host[0] in LOOPBACK_NAMES or host[0] == settings.server.host.strip("[]").lower()):
            return
    elif not allowed:
        return  # a non-loopback bind: the token guards, unless the host list is set
    raise Forbidden(f"Host {value!r} is not served here: this server answers to localhost, 127.0.0.1 and [::1]"
                    " (add names to server.allowed_hosts)", code="host_not_allowed")


def _origin_key(origin: str) -> tuple[str, int] | None:
    """(host, port) of an `Origin` value; None for `null` and anything malformed."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username is not None:
        return None
    return parts.hostname.lower().rstrip("."), port or DEFAULT_PORTS[parts.scheme.lower()]


def _normalized_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def origin_allowed(request: web.Request, settings: Settings, origin: str) -> bool:
    if _normalized_origin(origin) in {_normalized_origin(o) for o in settings.server.cors_origins}:
        return True
    key = _origin_key(origin)
    host = split_host(request.headers.get("Host", ""))
    if key is None or host is None:
        return False
    scheme = urlsplit(origin.strip()).scheme.lower()
    # Same origin: the page was served by this host and port (a Host without a port means the
    # default port of the page's scheme, as behind a TLS proxy).
    return key == (host[0], host[1] or DEFAULT_PORTS[scheme])


def check_origin(request: web.Request, settings: Settings) -> str | None:
    """The allowed origin the request carries (None without one); 403 for any other."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None  # curl, SDKs, the dashboard's client: not a browser page
    if not origin_allowed(request, settings, origin):
        raise Forbidden(f"requests from the web origin {origin[:200]!r} are not allowed (add it to "
                        "server.cors_origins to let that page call this server)", code="origin_not_allowed")
    return origin


def check_content_type(request: web.Request) -> None:
    if request.method in BODYLESS_METHODS or not request.body_exists:
        return  # nothing to read (download controls, DELETE; aiohttp labels an empty POST octet-stream)
    header = request.headers.get("Content-Type")
    if header is None:
        raise UnsupportedMediaType("the request has a body but no Content-Type: "
                                   "send 'Content-Type: application/json'")
    if not is_json_content_type(header):
        raise UnsupportedMediaType(f"send the body as application/json, not {header[:100]!r}")


def is_json_content_type(header: str) -> bool:
    """`application/json`, optionally with `charset=utf-8`: nothing a page can send unpreflighted."""
    mime, *params = (part.strip() for part in header.split(";"))
    if mime.lower() != "application/json":
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() != "charset" or value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


def preflight_response(origin: str) -> web.Response:
    return web.Response(status=204, headers={
        "Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": CORS_METHODS,
        "Access-Control-Allow-Headers": CORS_HEADERS, "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
        "Vary": "Origin"})


def check(request: web.Request, settings: Settings) -> web.Response | None:
    """Raise Forbidden / UnsupportedMediaType, or return the answer to an allowed preflight."""
    check_host(request, settings)
    origin = check_origin(request, settings)
    if origin is not None:
        request[ALLOWED_ORIGIN] = origin
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return preflight_response(origin)
    check_content_type(request)
    return None


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: every answer to an allowed origin (streams included) carries them."""
    origin = request.get(ALLOWED_ORIGIN)
    if origin is None or "Access-Control-Allow-Origin" in response.headers:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE
    response.headers.add("Vary", "Origin")
