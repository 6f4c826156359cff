"""What the request reader's depth check costs (issue 15): `loads_json` (size check, bracket-depth
scan, json.loads, surrogate check) against plain `json.loads` on the same bodies, in one run.

Bodies: a typical chat request, a 1 MiB chat with one long message, 1 MiB of shallow arrays
(`[[],[],...]`, the scan's worst case: a third of the bytes are brackets), and the attack the
scan exists for (100 KB of `[`, which json.loads cannot read: RecursionError).

Usage: python benchmarks/json_reader.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abi_tui.errors import AbiError  # noqa: E402
from abi_tui.server.parse import loads_json  # noqa: E402

LIMIT = 1024 * 1024


def bodies() -> dict[str, bytes]:
    chat = {"model": "x", "messages": [{"role": "system", "content": "be brief"},
                                       {"role": "user", "content": "hello [there] {friend}"}], "max_tokens": 64}
    long = {"model": "x", "messages": [{"role": "user", "content": "word [x] " * ((LIMIT - 100) // 9)}]}
    shallow = b"[" + b",".join([b"[]"] * 340_000) + b"]"
    return {f"typical chat ({len(json.dumps(chat))} B)": json.dumps(chat).encode(),
            "1 MiB chat, brackets in text": json.dumps(long).encode(),
            "1 MiB shallow arrays": shallow, "100 KB of [": b"[" * 100_000}


def best_of(fn, raw: bytes, repeat: int) -> tuple[float, str]:
    best, outcome = float("inf"), "ok"
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            fn(raw)
        except (AbiError, ValueError, RecursionError) as exc:
            outcome = type(exc).__name__
        best = min(best, time.perf_counter() - start)
    return best * 1000, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"{'body':<32}{'json.loads ms':>16}{'loads_json ms':>16}{'ratio':>8}  outcome")
    for name, raw in bodies().items():
        base, base_outcome = best_of(json.loads, raw, args.repeat)
        ours, outcome = best_of(lambda r: loads_json(r, LIMIT), raw, args.repeat)
        print(f"{name:<32}{base:>16.3f}{ours:>16.3f}{ours / base:>8.2f}  {base_outcome} -> {outcome}")


if __name__ == "__main__":
    main()
