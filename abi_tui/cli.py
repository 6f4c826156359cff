"""`abi`: the dashboard, the headless server, model cache management and benchmarks.

Heavy imports (Textual, llama.cpp, chromadb) are deferred into the branch that needs them, so
`abi --help` and the first screen of `abi dash` stay fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from abi_tui import __version__
from abi_tui.config import DEFAULT_PORT, ConfigError, Settings, load_settings
from abi_tui.errors import AbiError


class UsageError(Exception):
    """A bad flag or value: one line on stderr, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage on a bad flag; users want the reason, on one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see --help)")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, got {text}")
    return value


# dotted setting -> (flag, argparse kwargs)
SERVER_FLAGS: dict[str, tuple[str, dict]] = {
    "server.host": ("--host", {"help": "address to bind (default 127.0.0.1)"}),
    "server.port": ("--port", {"type": port_number, "help": f"port (default {DEFAULT_PORT})"}),
    "server.model": ("--model", {"help": "model to load at start: NAME, PATH or hub spec"}),
    "server.token": ("--token", {"help": "API bearer token (or ABI_API_TOKEN)"}),
    "server.admin_token": ("--admin-token", {"help": "admin token for /admin/* (defaults to the API token)"}),
    "server.max_streams": ("--max-streams", {"type": positive_int, "help": "streams generating at once (100)"}),
    "server.max_queue": ("--max-queue", {"type": non_negative_int, "help": "requests waiting for a slot (64)"}),
    "server.heartbeat_ms": ("--heartbeat-ms", {"type": non_negative_int, "help": "SSE heartbeat period, 0 = off (15000)"}),
    "server.n_ctx": ("--n-ctx", {"type": positive_int, "help": "context length per request (4096)"}),
    "server.n_gpu_layers": ("--n-gpu-layers", {"type": int, "help": "layers offloaded to the GPU, -1 = all"}),
    "server.threads": ("--threads", {"type": positive_int, "help": "CPU threads for generation"}),
    "server.parallel": ("--parallel", {"type": positive_int, "help": "sequences decoded together per model (8)"}),
    "server.flash_attn": ("--flash-attn", {"choices": ("auto", "on", "off"),
                                           "help": "llama.cpp flash attention (auto: llama.cpp decides)"}),
    "server.cors_origins": ("--cors-origins", {"metavar": "ORIGINS",
                                               "help": "comma-separated origins whose pages may call the API"}),
    "server.allowed_hosts": ("--allowed-hosts", {"metavar": "HOSTS",
                                                 "help": "comma-separated Host names accepted besides localhost"}),
    "server.model_dirs": ("--model-dirs", {"metavar": "DIRS",
                                           "help": "comma-separated folders API clients may load models from"}),
}


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    for dotted, (flag, kwargs) in SERVER_FLAGS.items():
        parser.add_argument(flag, dest=dotted.replace(".", "__"), default=None, **kwargs)
    parser.add_argument(
        "--insecure-no-auth", dest="server__insecure_no_auth", action="store_const", const=True,
        default=None, help="allow a non-loopback bind without a token",
    )


def flag_overrides(args: argparse.Namespace) -> dict:
    return {k.replace("__", "."): v for k, v in vars(args).items() if "__" in k and v is not None}


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="abi", description="A terminal workstation for local LLMs.")
    parser.add_argument("--version", action="version", version=f"abi {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)

    dash = commands.add_parser("dash", help="the dashboard (and its embedded server)",
                               description="Start the dashboard with an embedded server, the server alone (--serve), or a dashboard attached to a remote server (--connect).")
    mode = dash.add_mutually_exclusive_group()
    mode.add_argument("--serve", action="store_true", help="run the server headless, no UI")
    mode.add_argument("--connect", metavar="URL", help="attach to a running abi server")
    add_server_flags(dash)
    # `abi dash` runs its server as `abi dash --serve --supervised-by <its pid>`: the child ends
    # when that process does (abi_tui/server/supervisor.py).
    dash.add_argument("--supervised-by", type=positive_int, metavar="PID", help=argparse.SUPPRESS)

    from abi_tui.bench import commands as bench_commands
    from abi_tui.memory import commands as memory_commands
    from abi_tui.models import commands as model_commands

    model_commands.add_parser(commands)
    bench_commands.add_parser(commands)
    memory_commands.add_parser(commands)
    return parser


# Flags the dashboard does not hand to its server: the child listens on a free loopback port with
# a token of its own.
NOT_INHERITED = frozenset({"server.host", "server.port", "server.token", "server.insecure_no_auth"})


def inherited_flags(args: argparse.Namespace) -> list[str]:
    """The `abi dash` flags, as arguments for the `abi dash --serve` it starts."""
    flags: list[str] = []
    for dotted, value in flag_overrides(args).items():
        if dotted in SERVER_FLAGS and dotted not in NOT_INHERITED:
            flags += [SERVER_FLAGS[dotted][0], str(value)]
    return flags


def run_dash(args: argparse.Namespace, settings: Settings) -> int:
    if args.serve:
        from abi_tui.server.main import serve_forever

        if args.supervised_by:
            from abi_tui.server.supervisor import watch_parent

            watch_parent(args.supervised_by)
        return serve_forever(settings)
    from abi_tui.app import run_app

    if args.connect:
        return run_app(settings, connect=args.connect, token=args.__dict__.get("server__token"))
    # The dashboard's own server: a child process, started now so that it loads while the
    # first screen paints; the app follows it by URL and token like any other server.
    from abi_tui.server.supervisor import ServerSupervisor

    supervisor = ServerSupervisor(inherited_flags(args), logs_dir=settings.logs_dir).launch()
    try:
        return run_app(settings, server=supervisor)
    finally:
        supervisor.stop()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        settings = load_settings(flag_overrides(args))
        if args.command == "dash":
            return run_dash(args, settings)
        return args.run(args, settings)
    except (UsageError, ConfigError, AbiError) as exc:
        print(f"abi: {exc}" if isinstance(exc, (ConfigError, AbiError)) else str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
