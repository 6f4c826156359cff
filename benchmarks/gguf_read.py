"""How long reading a GGUF's summary takes, against the gguf package's reader in the same run.

    python benchmarks/gguf_read.py [--model PATH] [--rounds 20]

The Models pane and `abi model list` summarise every cached model, and a hot swap validates
the new file first, so this is paid once per file per listing. Prints the median and minimum in
milliseconds for `gguf_info.read_summary` (the one reader: `gguf_header.read_header` plus the
summary) and for `gguf.GGUFReader` (the baseline: it builds a numpy view per array element),
and their ratio. The default model is gemma-3-270m (262k-token vocabulary).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import gguf
from harness import gemma_path

from abi_tui.models.gguf_info import read_summary


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    fn()  # warm the page cache and imports
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    path = args.model or gemma_path()
    ours = timed(lambda: read_summary(path), args.rounds)
    base = timed(lambda: gguf.GGUFReader(path), max(1, args.rounds // 10))
    print(f"{path.name}: {path.stat().st_size / 2**20:.0f} MiB")
    print(f"read_summary      median {ours[0]:8.1f} ms   min {ours[1]:8.1f} ms")
    print(f"gguf.GGUFReader   median {base[0]:8.1f} ms   min {base[1]:8.1f} ms")
    print(f"ratio (baseline / read_summary, medians): {base[0] / ours[0]:.0f}x")


if __name__ == "__main__":
    main()
