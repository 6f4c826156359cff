"""What the server costs per token: one stream through (a) llama-cpp-python in-process,
(b) `abi dash --serve`, (c) `python -m llama_cpp.server --interrupt_requests False`,
same model, same prompt, same thread count, in one run.

Targets (issue 2): gemma, abi >= 0.95 x in-process tok/s; tiny model, abi >= 3 x llama_cpp.server.
Usage: python benchmarks/server_overhead.py [--runs 5] [--tokens 128] [--only gemma|tiny]
"""

from __future__ import annotations

import argparse
import asyncio

from harness import (
    HEADER,
    abi_server,
    add_flash_attn_flag,
    gemma_path,
    in_process_stream,
    llama_cpp_server,
    local_llama,
    low_level_ceiling,
    row,
    run_concurrent,
    summarize,
    tiny_path,
)

PROMPT = "The history of the city of Rome begins"


def best_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """The median run by per-stream tok/s (robust to one noisy run on a shared machine)."""
    ordered = sorted(runs, key=lambda s: s["per_stream_tok_s"])
    return ordered[len(ordered) // 2]


def measure(name: str, path, threads: int, runs: int, tokens: int, flash_attn: bool) -> dict[str, dict[str, float]]:
    """Runs of the three interleaved (in-process, abi, llama_cpp.server, again...), so drift in
    the machine's load lands on all three alike."""
    samples: dict[str, list[dict[str, float]]] = {"low-level ceiling": [], "in-process": [], "abi": [],
                                                  "llama_cpp.server": []}
    llama = local_llama(path, threads=threads, flash_attn=flash_attn)
    with (abi_server(path, threads=threads, flash_attn=flash_attn) as abi_url,
          llama_cpp_server(path, threads=threads, flash_attn=flash_attn) as cpp_url):
        in_process_stream(llama, PROMPT, 8)  # warm-ups
        for url in (abi_url, cpp_url):
            asyncio.run(run_concurrent(url, [PROMPT], 8))
        for _ in range(runs):
            timing = low_level_ceiling(llama, PROMPT, tokens)
            samples["low-level ceiling"].append(summarize([timing], timing.end - timing.sent))
            timing = in_process_stream(llama, PROMPT, tokens)
            samples["in-process"].append(summarize([timing], timing.end - timing.sent))
            for label, url in (("abi", abi_url), ("llama_cpp.server", cpp_url)):
                timings, wall = asyncio.run(run_concurrent(url, [PROMPT], tokens))
                samples[label].append(summarize(timings, wall))
    results = {label: best_of(runs_) for label, runs_ in samples.items()}
    print(f"\n{name} (threads={threads}, {tokens} tokens, median of {runs} interleaved runs, "
          f"flash attention {'on' if flash_attn else 'off'})")
    print(HEADER)
    for label, stats in results.items():
        print(row(label, stats))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--only", choices=("gemma", "tiny"))
    parser.add_argument("--tiny-tokens", type=int, default=512)
    add_flash_attn_flag(parser)
    args = parser.parse_args()
    flash_attn = args.flash_attn == "on"
    if args.only in (None, "gemma"):
        gemma = measure("gemma-3-270m Q4_K_M", gemma_path(), 2, args.runs, args.tokens, flash_attn)
        ratio = gemma["abi"]["per_stream_tok_s"] / gemma["in-process"]["per_stream_tok_s"]
        print(f"gemma: abi / in-process tok/s = {ratio:.3f} (target >= 0.95)")
        ratio = gemma["abi"]["per_stream_tok_s"] / gemma["llama_cpp.server"]["per_stream_tok_s"]
        print(f"gemma: abi / llama_cpp.server tok/s = {ratio:.3f}")
    if args.only in (None, "tiny"):
        tiny = measure("tiny random model", tiny_path(), 1, args.runs, args.tiny_tokens, flash_attn)
        ratio = tiny["abi"]["per_stream_tok_s"] / tiny["llama_cpp.server"]["per_stream_tok_s"]
        print(f"tiny: abi / llama_cpp.server tok/s = {ratio:.2f} (target >= 3)")
        ratio = tiny["abi"]["per_stream_tok_s"] / tiny["in-process"]["per_stream_tok_s"]
        print(f"tiny: abi / in-process tok/s = {ratio:.2f}")
        ratio = tiny["abi"]["per_stream_tok_s"] / tiny["low-level ceiling"]["per_stream_tok_s"]
        print(f"tiny: abi / low-level ceiling tok/s = {ratio:.2f}")


if __name__ == "__main__":
    main()
