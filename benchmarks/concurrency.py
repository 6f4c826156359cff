"""Concurrent streams (issue 10): abi (continuous batching) vs `python -m llama_cpp.server
--interrupt_requests False` vs llama-cpp-python in-process, at concurrency 1, 2, 4, 8, on gemma
and on the tiny model, same prompts, same threads, in one run.

In-process has no server: at concurrency N the N requests run one after another on one Llama,
as an application embedding llama-cpp-python would; TTFT counts from when all N were ready.

Targets: gemma c=8 aggregate >= 2.4 x llama_cpp.server and TTFT p50 <= 300 ms; c=4 >= 1.5 x and
<= 150 ms; c=1 >= 0.97 x in-process; tiny c=1 >= 10 x llama_cpp.server.
Usage: python benchmarks/concurrency.py [--tokens 64] [--only gemma|tiny] [--levels 1,2,4,8]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from harness import (
    HEADER,
    StreamTiming,
    abi_server,
    add_flash_attn_flag,
    gemma_path,
    llama_cpp_server,
    local_llama,
    row,
    run_concurrent,
    summarize,
    tiny_path,
)

PROMPTS = [
    "The history of the city of Rome begins", "In the beginning of the industrial revolution",
    "The recipe for a good bread starts with", "Deep in the forest there lived", "The theory of relativity says",
    "Our small village was famous for", "To build a reliable bridge engineers", "The first time I saw the ocean",
]


def prompts(level: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(level)]


def in_process(llama, level: int, tokens: int, ban: int | None) -> tuple[list[StreamTiming], float]:
    sent = time.perf_counter()
    timings = []
    bias = {ban: -100.0} if ban is not None else None
    for prompt in prompts(level):
        timing = StreamTiming(sent=sent)
        for chunk in llama.create_completion(prompt, max_tokens=tokens, temperature=0,
                                             stream=True, logit_bias=bias):
            if chunk["choices"][0]["text"]:
                timing.arrivals.append(time.perf_counter())
                timing.text += chunk["choices"][0]["text"]
        timings.append(timing)
    return timings, time.perf_counter() - sent


def measure(name: str, path, threads: int, levels: list[int], tokens: int, ban: int | None, flash_attn: bool) -> dict:
    results: dict[tuple[str, int], dict] = {}
    llama = local_llama(path, threads=threads, flash_attn=flash_attn)
    in_process(llama, 1, 8, ban)
    for level in levels:
        timings, wall = in_process(llama, level, tokens, ban)
        results[("in-process", level)] = summarize(timings, wall)
    del llama
    top = max(levels)
    agree = None
    for label, server in (("abi", abi_server(path, threads=threads, flash_attn=flash_attn, parallel=top, n_ctx=1024)),
                          ("llama_cpp.server", llama_cpp_server(path, threads=threads, flash_attn=flash_attn))):
        with server as url:
            asyncio.run(run_concurrent(url, prompts(1), 8, ban=ban))  # warm-up
            for level in levels:
                timings, wall = asyncio.run(run_concurrent(url, prompts(level), tokens, ban=ban))
                results[(label, level)] = summarize(timings, wall)
                if label == "abi" and level == top:
                    batched = [t.text for t in timings]
            if label == "abi":  # each prompt alone, to compare with the batched answers
                solo = [asyncio.run(run_concurrent(url, [prompt], tokens, ban=ban))[0][0].text for prompt in prompts(top)]
                agree = sum(a == b for a, b in zip(batched, solo))
    print(f"\n{name} (threads={threads}, {tokens} tokens per stream, flash attention {'on' if flash_attn else 'off'})")
    print(HEADER)
    for level in levels:
        for label in ("in-process", "abi", "llama_cpp.server"):
            print(row(f"{label} c={level}", results[(label, level)]))
    print(f"{name}: {agree} of {top} batched greedy streams match their solo run exactly")
    return results


def report(name: str, r: dict, levels: list[int]) -> None:
    def agg(label: str, level: int) -> float:
        return r[(label, level)]["aggregate_tok_s"]

    for level, target, ttft in ((8, 2.4, 300), (4, 1.5, 150)):
        if level in levels:
            ratio = agg("abi", level) / agg("llama_cpp.server", level)
            print(f"{name} c={level}: abi / llama_cpp.server aggregate = {ratio:.2f} (target >= {target}); "
                  f"abi TTFT p50 = {r[('abi', level)]['ttft_p50_ms']:.0f} ms (target <= {ttft})")
    if 1 in levels:
        print(f"{name} c=1: abi / in-process = {r[('abi', 1)]['per_stream_tok_s'] / r[('in-process', 1)]['per_stream_tok_s']:.3f}"
              f"; abi / llama_cpp.server = {r[('abi', 1)]['per_stream_tok_s'] / r[('llama_cpp.server', 1)]['per_stream_tok_s']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--only", choices=("gemma", "tiny"))
    parser.add_argument("--levels", default="1,2,4,8")
    add_flash_attn_flag(parser)
    args = parser.parse_args()
    flash_attn = args.flash_attn == "on"
    levels = [int(x) for x in args.levels.split(",")]
    if args.only in (None, "gemma"):
        data = measure("gemma", gemma_path(), 2, levels, args.tokens, ban=1, flash_attn=flash_attn)
        report("gemma", data, levels)
    if args.only in (None, "tiny"):
        data = measure("tiny", tiny_path(), 1, levels, max(args.tokens, 512), ban=None, flash_attn=flash_attn)
        report("tiny", data, levels)


if __name__ == "__main__":
    main()
