"""`abi bench streaming`: the streaming benchmark (SPEC §7)."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("bench", help="streaming benchmark", description="Benchmarks.")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", parser_class=type(parser))
    kinds.add_parser("streaming", help="streaming latency and throughput (not yet available)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings) -> int:
    print("abi bench: not yet available")
    return 1
