"""`abi model list|info|download|remove|search|path|verify`: model cache management."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

ACTIONS = ("list", "info", "download", "remove", "search", "path", "verify")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _sha256(text: str) -> str:
    value = text.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise argparse.ArgumentTypeError("must be 64 hexadecimal digits")
    return value


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("model", help="list, download, inspect and remove models",
                                 description="Model cache management: your downloads and the GGUF files "
                                             "of the Hugging Face cache, LM Studio and Ollama.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))

    p = actions.add_parser("list", help="cached models (name, quant, size, params, context, source, loaded)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = actions.add_parser("info", help="all metadata of a model, with a memory estimate")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = actions.add_parser("download", help="download a model (resumable, verified)",
                           description="Download owner/repo:QUANT, owner/repo/file.gguf, hf://... or a URL. "
                                       "Interrupted downloads continue where they stopped when run again.")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--quant", help="quant to fetch from an owner/repo spec (e.g. Q4_K_M)")
    p.add_argument("--sha256", type=_sha256, help="expected sha256 (for URLs; the hub's is used otherwise)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check")
    p.add_argument("--connections", type=_positive_int, default=4, help="connections per large file (4)")
    p.add_argument("--json", action="store_true", help="print progress events as JSON lines")

    p = actions.add_parser("remove", help="delete a downloaded model and its sidecar")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    p = actions.add_parser("search", help="search the hub for GGUF repos, with their quants and sizes")
    p.add_argument("query", metavar="QUERY", nargs="?", default="")
    p.add_argument("--limit", type=_positive_int, default=10, help="repos to show (10)")
    p.add_argument("--sort", choices=("downloads", "likes", "updated"), default="downloads")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = actions.add_parser("path", help="show the models folder, or set it (saved in config.toml)")
    p.add_argument("dir", metavar="DIR", nargs="?")

    p = actions.add_parser("verify", help="re-hash a model against its recorded sha256")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run, model_parser=parser)


def run(args: argparse.Namespace, settings: Any) -> int:
    action = getattr(args, "action", None)
    if action is None:
        args.model_parser.print_help()
        return 0
    return HANDLERS[action](args, settings)


def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:  # piped: never cut names to fit 80 columns
        console = Console(stderr=stderr, highlight=False, width=max(console.width, 200))
    return console


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


# -- list / info --------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace, settings: Any) -> int:
    from rich.table import Table

    from abi_tui.models.cache import list_models, server_loaded_models
    from abi_tui.models.units import human_bytes, human_count

    models = list_models(settings, loaded=server_loaded_models(settings))
    if args.json:
        _print_json([m.to_dict() for m in models])
        return 0
    console = _console()
    if not models:
        console.print(f"No models yet in {settings.models_dir} (nor in the Hugging Face cache, LM Studio or Ollama).\n"
                      "Download one with: abi model download OWNER/REPO:QUANT")
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("NAME", "QUANT", "SIZE", "PARAMS", "CONTEXT", "SOURCE", "LOADED", "KIND"):
        table.add_column(column, no_wrap=True, justify="right" if column in ("SIZE", "PARAMS", "CONTEXT") else "left")
    for m in models:
        s = m.summary
        table.add_row(m.id, m.quant or "-", human_bytes(m.size),
                      human_count(s.parameters if s else None), f"{s.context_length}" if s and s.context_length else "-",
                      m.source, "yes" if m.loaded else "",
                      "embedding" if s is not None and s.is_embedding_model else "")
    console.print(table)
    return 0


def cmd_info(args: argparse.Namespace, settings: Any) -> int:
    from rich.table import Table

    from abi_tui.models.cache import find_model, list_models, server_loaded_models
    from abi_tui.models.gguf_info import estimate_memory, read_summary
    from abi_tui.models.units import human_bytes, human_count

    model = find_model(settings, args.name, list_models(settings, loaded=server_loaded_models(settings)))
    if model.summary is None:
        model.summary = read_summary(model.files or [model.path])
    estimate = estimate_memory(model.summary, settings.server.n_ctx)
    data = {**model.to_dict(), "memory_estimate": estimate.to_dict()}
    if args.json:
        _print_json(data)
        return 0
    s = model.summary
    rows: list[tuple[str, str]] = [
        ("name", model.id), ("source", model.source), ("path", str(model.path)),
        ("files", str(len(model.files))), ("size", human_bytes(model.size)),
        ("repo", model.repo or "-"), ("spec", model.spec or "-"), ("revision", model.revision or "-"),
        ("url", model.url or "-"), ("sha256", ", ".join(x or "?" for x in model.sha256) or "-"),
        ("verified", "yes" if model.verified else "no"), ("downloaded", model.downloaded_at or "-"),
        ("loaded", "yes" if model.loaded else "no"),
        ("architecture", s.architecture or "-"), ("model name", s.name or "-"),
        ("parameters", f"{human_count(s.parameters)} ({s.parameters:,})" if s.parameters else "-"),
        ("quantization", s.quantization or model.quant or "-"),
        ("context length", str(s.context_length or "-")), ("layers", str(s.layers or "-")),
        ("embedding size", str(s.embedding_size or "-")),
        ("attention heads", f"{s.head_count or '-'} (KV {s.head_count_kv or '-'})"),
        ("vocabulary", str(s.vocab_size or "-")), ("chat template", "yes" if s.chat_template else "no"),
        (f"memory at n_ctx {estimate.n_ctx}",
         f"{human_bytes(estimate.total_bytes)} = weights {human_bytes(estimate.weights_bytes)} "
         f"+ KV cache {human_bytes(estimate.kv_cache_bytes)}"),
    ]
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    _console().print(table)
    return 0


# -- download -----------------------------------------------------------------------------
def cmd_download(args: argparse.Namespace, settings: Any) -> int:
    try:
        return asyncio.run(_download(args, settings))
    except KeyboardInterrupt:
        print("abi: download interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return 130


async def _download(args: argparse.Namespace, settings: Any) -> int:
    from abi_tui.models.download import DownloadOptions
    from abi_tui.models.errors import InvalidRequest
    from abi_tui.models.progress import DownloadProgress
    from abi_tui.models.pull import start_download
    from abi_tui.models.spec import parse_spec
    from abi_tui.models.units import human_bytes

    spec = parse_spec(args.spec).with_quant(args.quant)
    if spec.kind not in ("hub", "url"):
        raise InvalidRequest(f"{args.spec!r} is not something to download: use owner/repo:QUANT, "
                             "owner/repo/file.gguf, hf://... or an https:// URL", param="spec")
    options = DownloadOptions(connections=args.connections)
    handle = start_download(settings, args.spec, quant=args.quant, sha256=args.sha256,
                            verify=not args.no_verify, options=options)
    if args.json:
        def emit(event: DownloadProgress) -> None:
            print(json.dumps(event.to_dict()), flush=True)

        handle.add_callback(emit)
        model = await handle.wait()
        return 0

    console = _console(stderr=True)
    if not console.is_terminal:  # a log, not a screen: one line per state change
        last: list[str] = []

        def log(event: DownloadProgress) -> None:
            line = f"{event.name or args.spec}: {event.state.value}" + (f" ({event.message})" if event.message else "")
            if last != [line]:
                last[:] = [line]
                console.print(line)

        handle.add_callback(log)
        model = await handle.wait()
    else:
        model = await _download_with_bar(handle, args.spec, console)
    check = "sha256 verified" if model.verified else "not verified (no checksum known)" if not args.no_verify else "not verified (--no-verify)"
    _console().print(f"{model.id}: {human_bytes(model.size)} in {model.path} ({check})")
    return 0


async def _download_with_bar(handle: Any, spec: str, console: Any) -> Any:
    """Rich progress: bar, bytes, speed over the last 10 s, ETA, state."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from abi_tui.models.progress import DownloadProgress
    from abi_tui.models.units import human_bytes, human_duration

    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(bar_width=None), DownloadColumn(),
        TextColumn("{task.fields[rate]}", justify="right"), TextColumn("ETA {task.fields[eta]}"),
        TextColumn("{task.fields[state]}"),
    )
    with Progress(*columns, console=console, transient=False, refresh_per_second=8) as bar:
        task = bar.add_task(spec, total=None, rate="", eta="?", state="queued")

        def show(event: DownloadProgress) -> None:
            note = event.state.value + (f": {event.message}" if event.message else "")
            bar.update(task, description=event.name or spec, completed=event.downloaded, total=event.total,
                       rate=f"{human_bytes(event.rate_bps)}/s" if event.rate_bps else "",
                       eta=human_duration(event.eta_s), state=note)

        handle.add_callback(show)
        show(handle.progress)
        return await handle.wait()


# -- remove / path / verify / search ------------------------------------------------------
def cmd_remove(args: argparse.Namespace, settings: Any) -> int:
    from abi_tui.models.cache import find_model, remove_model
    from abi_tui.models.errors import InvalidRequest
    from abi_tui.models.units import human_bytes

    model = find_model(settings, args.name)
    if not args.yes:
        if not sys.stdin.isatty():
            raise InvalidRequest(f"remove {model.id}: pass --yes to confirm without a terminal", param="yes")
        answer = input(f"Remove {model.id} ({human_bytes(model.size)}, {model.path})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Kept.")
            return 1
    removed = remove_model(settings, str(model.path))
    print(f"Removed {removed.id} ({human_bytes(removed.size)}).")
    return 0


def cmd_path(args: argparse.Namespace, settings: Any) -> int:
    from abi_tui.config import save_setting

    if args.dir is None:
        print(settings.models_dir)
        return 0
    target = Path(args.dir).expanduser().resolve()
    if target.exists() and not target.is_dir():
        from abi_tui.models.errors import InvalidRequest

        raise InvalidRequest(f"{target} exists and is not a folder", param="dir")
    target.mkdir(parents=True, exist_ok=True)
    save_setting(settings, "models.dir", str(target))
    print(f"Models folder set to {target} (saved in {settings.config_path}).")
    return 0


def cmd_verify(args: argparse.Namespace, settings: Any) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from abi_tui.models.cache import find_model, verify_model

    model = find_model(settings, args.name)
    with Progress(TextColumn("[bold]verifying {task.description}"), BarColumn(bar_width=None), DownloadColumn(),
                  TransferSpeedColumn(), console=_console(stderr=True), transient=True,
                  disable=args.json) as bar:
        task = bar.add_task(model.id, total=model.size)
        result = verify_model(settings, args.name, lambda done, total: bar.update(task, completed=done))
    if args.json:
        _print_json(result.to_dict())
    elif result.ok:
        print(f"{model.id}: sha256 matches ({len(result.files)} file{'s' if len(result.files) > 1 else ''}).")
    else:
        for f in result.files:
            if not f["ok"]:
                print(f"abi: {f['path']}: sha256 mismatch: expected {f['expected']}, got {f['actual']}", file=sys.stderr)
    return 0 if result.ok else 1


def cmd_search(args: argparse.Namespace, settings: Any) -> int:
    from rich.table import Table

    from abi_tui.models.hub import search_gguf
    from abi_tui.models.units import human_bytes

    results = search_gguf(args.query, limit=args.limit, sort=args.sort)
    if args.json:
        _print_json([r.to_dict() for r in results])
        return 0
    console = _console()
    if not results:
        console.print(f"No GGUF repos match {args.query!r}.")
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("REPO", no_wrap=True)
    table.add_column("DOWNLOADS", justify="right")
    table.add_column("LIKES", justify="right")
    table.add_column("UPDATED")
    table.add_column("QUANTS (download as REPO:QUANT)", overflow="fold")
    for r in results:
        quants = ", ".join(f"{q.quant} {human_bytes(q.size)}" + (f" ({q.files} files)" if q.files > 1 else "")
                           for q in r.quants) or "-"
        table.add_row(r.repo, f"{r.downloads:,}" if r.downloads is not None else "-",
                      str(r.likes if r.likes is not None else "-"), (r.updated or "-")[:10], quants)
    console.print(table)
    return 0


HANDLERS = {
    "list": cmd_list, "info": cmd_info, "download": cmd_download, "remove": cmd_remove,
    "search": cmd_search, "path": cmd_path, "verify": cmd_verify,
}
