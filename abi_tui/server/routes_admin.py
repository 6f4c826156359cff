"""Admin routes (admin token): the hot model swap."""

from __future__ import annotations

from aiohttp import web

from abi_tui.errors import InvalidRequest
from abi_tui.server.parse import read_json
from abi_tui.server.state import state_of


async def reload_model(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json(request, state.settings.server.max_body_bytes)
    spec = body.get("model")
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidRequest("'model' is required: a cached model name, a path or a hub spec", param="model")
    timeout = body.get("drain_timeout_s", 30)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout <= 3600:
        raise InvalidRequest("'drain_timeout_s' must be a number of seconds from 0 to 3600", param="drain_timeout_s")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise InvalidRequest("'force' must be true or false", param="force")
    options = {}
    for key, low in (("n_ctx", 16), ("n_gpu_layers", -1)):
        value = body.get(key)
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON has one number type: 2048.0 is the integer 2048
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidRequest(f"'{key}' must be an integer of at least {low}", param=key)
            options[key] = value
    result = await state.engine.reload(spec.strip(), drain_timeout_s=float(timeout), force=force, **options)
    remember = state.services.get("remember_model")
    if remember is not None:
        remember(spec.strip())
    return web.json_response(result)


def setup(app: web.Application) -> None:
    app.router.add_post("/admin/reload", reload_model)
