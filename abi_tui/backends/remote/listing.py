"""What each endpoint serves (`<prefix>/<model>`), for /v1/models: asked concurrently with a
short timeout, answers cached (failures briefly), so an unreachable endpoint costs at most
LIST_TIMEOUT_S once and nothing on the next calls."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from abi_tui.backends.remote.endpoints import Endpoint
from abi_tui.net.http_client import HttpStreams

log = logging.getLogger(__name__)

LIST_TIMEOUT_S = 2.0      # /v1/models asks each endpoint with this budget...
LIST_TTL_S = 60.0         # ...keeps the answer this long...
LIST_FAILURE_TTL_S = 10.0  # ...and remembers an unreachable endpoint for this long

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


async def _ask_models(streams: HttpStreams, endpoint: Endpoint, url: str, headers: dict[str, str],
                      timeout_s: float) -> list[str]:
    try:
        async with asyncio.timeout(timeout_s):
            async with await streams.open("GET", url, headers=headers) as response:
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


async def list_remote_models(endpoints: dict[str, Endpoint], streams: HttpStreams,
                             timeout_s: float = LIST_TIMEOUT_S) -> list[str]:
    """`<prefix>/<model>` for what each endpoint serves, in the endpoints' order."""
    now = time.monotonic()
    results: dict[str, list[str]] = {}
    asks: dict[str, tuple[tuple[str, str, str], asyncio.Future[list[str]]]] = {}
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
        asks[endpoint.name] = (key, asyncio.ensure_future(_ask_models(streams, endpoint, url, headers, timeout_s)))
    if asks:
        await asyncio.wait([future for _, future in asks.values()])
    for name, (key, future) in asks.items():
        if future.exception() is None:
            results[name] = future.result()
            _MODEL_CACHE[key] = (time.monotonic() + LIST_TTL_S, results[name])
        else:
            _MODEL_CACHE[key] = (time.monotonic() + LIST_FAILURE_TTL_S, [])
    return [model for name in endpoints if name in results for model in results[name]]


def clear_model_cache() -> None:
    _MODEL_CACHE.clear()
