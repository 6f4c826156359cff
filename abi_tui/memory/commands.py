"""`abi memory list|search|forget|reembed`: memory through the running server, which owns it (an
embedded Chroma store must have one process writing it)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from abi_tui.errors import AbiError

ACTIONS = ("list", "search", "forget", "reembed")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("memory", help="list, search, forget and re-embed what personas remember",
                                 description="Persona memory, through the running abi server "
                                             "(abi dash or abi dash --serve).")
    parser.add_argument("--url", help="the server (default: http://127.0.0.1:<server.port>)")
    parser.add_argument("--token", help="API token (default: ABI_API_TOKEN)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    p = actions.add_parser("list", help="remembered items, newest first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--contains", help="only items whose text contains this")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = actions.add_parser("search", help="what a message would recall")
    p.add_argument("text")
    p.add_argument("--mode", choices=("fused", "bm25", "vectors"), default="fused")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = actions.add_parser("forget", help="forget items by id (see list)")
    p.add_argument("ids", nargs="+", metavar="ID")
    actions.add_parser("reembed", help="embed every item with the current embedding model (progress bar)",
                       description="After vector_store.embedding_model changes: the new model's "
                                   "collection gets every remembered item.")
    parser.set_defaults(run=run, memory_parser=parser)


def run(args: argparse.Namespace, settings: Any) -> int:
    if getattr(args, "action", None) is None:
        args.memory_parser.print_help()
        return 0
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Any) -> int:
    from abi_tui.client import AbiClient, ClientError

    url = args.url or f"http://127.0.0.1:{settings.server.port}"
    token = args.token or settings.server.token
    async with AbiClient(url, token) as client:
        try:
            return await HANDLERS[args.action](client, args)
        except ClientError as exc:
            raise AbiError(f"{url}: {exc.message} (is `abi dash --serve` running?)") from None


async def _list(client: Any, args: argparse.Namespace) -> int:
    items, total = await client.memories(limit=args.limit, contains=args.contains)
    if args.json:
        print(json.dumps({"items": [vars(i) for i in items], "total": total}, indent=2))
        return 0
    for item in items:
        print(f"{item.id:<14} {item.role:<9} {item.text}")
    print(f"{len(items)} of {total} items", file=sys.stderr)
    return 0


async def _search(client: Any, args: argparse.Namespace) -> int:
    hits = await client.recall(args.text, mode=args.mode)
    if args.json:
        print(json.dumps([vars(h) for h in hits], indent=2))
        return 0
    for hit in hits:
        print(f"{hit.score:6.3f}  {hit.id:<14} {'+'.join(hit.sources):<11} {hit.text}")
    if not hits:
        print("nothing recalled", file=sys.stderr)
    return 0


async def _forget(client: Any, args: argparse.Namespace) -> int:
    for item_id in args.ids:
        await client.forget_memory(item_id)
        print(f"forgot {item_id}")
    return 0


async def _reembed(client: Any, args: argparse.Namespace) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("re-embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=False) as progress:
        task = progress.add_task("reembed", total=None)
        async for event in client.reembed_memory():
            if "total" in event:
                progress.update(task, completed=event["done"], total=event["total"])
            elif "added" in event:
                progress.stop()
                print(f"{event['added']} items embedded with {event.get('model')}")
    return 0


HANDLERS = {"list": _list, "search": _search, "forget": _forget, "reembed": _reembed}
