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
    gemma_path,
    in_process_stream,
    llama_cpp_server,
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


def measure(name: str, path, threads: int, runs: int, tokens: int) -> dict[str, dict[str, float]]:
    from llama_cpp import Llama

    results: dict[str, dict[str, float]] = {}
    llama = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    in_process_stream(llama, PROMPT, 8)  # warm-up
    samples = []
    for _ in range(runs):
        timing = in_process_stream(llama, PROMPT, tokens)
        samples.append(summarize([timing], timing.end - timing.sent))
    results["in-process"] = best_of(samples)
    del llama

    for label, server in (("abi", abi_server(path, threads=threads)),
                          ("llama_cpp.server", llama_cpp_server(path, threads=threads))):
        with server as url:
            asyncio.run(run_concurrent(url, PROMPT, 8, 1))  # warm-up
            samples = []
            for _ in range(runs):
                timings, wall = asyncio.run(run_concurrent(url, PROMPT, tokens, 1))
                samples.append(summarize(timings, wall))
            results[label] = best_of(samples)
    print(f"\n{name} (threads={threads}, {tokens} tokens, median of {runs} runs)")
    print(HEADER)
    for label, stats in results.items():
        print(row(label, stats))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--only", choices=("gemma", "tiny"))
    args = parser.parse_args()
    if args.only in (None, "gemma"):
        gemma = measure("gemma-3-270m Q4_K_M", gemma_path(), 2, args.runs, args.tokens)
        ratio = gemma["abi"]["per_stream_tok_s"] / gemma["in-process"]["per_stream_tok_s"]
        print(f"gemma: abi / in-process tok/s = {ratio:.3f} (target >= 0.95)")
        ratio = gemma["abi"]["per_stream_tok_s"] / gemma["llama_cpp.server"]["per_stream_tok_s"]
        print(f"gemma: abi / llama_cpp.server tok/s = {ratio:.3f}")
    if args.only in (None, "tiny"):
        tiny = measure("tiny random model", tiny_path(), 1, args.runs, max(args.tokens, 512))
        ratio = tiny["abi"]["per_stream_tok_s"] / tiny["llama_cpp.server"]["per_stream_tok_s"]
        print(f"tiny: abi / llama_cpp.server tok/s = {ratio:.2f} (target >= 3)")
        ratio = tiny["abi"]["per_stream_tok_s"] / tiny["in-process"]["per_stream_tok_s"]
        print(f"tiny: abi / in-process tok/s = {ratio:.2f}")


if __name__ == "__main__":
    main()
