"""Routing speed on the labelled set, against baselines measured in the same run.

    python benchmarks/router_speed.py [--rounds 200]

Prints per-message mean, p50, p99 and max in milliseconds for PersonaRouter.route() (target:
under 5 ms) and for two baselines, twice: wall-clock time, and the thread's CPU time
(which leaves out time the OS gave to other processes, so a busy machine does not inflate the
tail). The load average is printed with them.
- "lower+split": just `str.lower().split()`, the floor any word-based router pays;
- "naive substring": the keyword-in-text router that matches inside words ("go" in "good"), with
  the same number of keywords; its accuracy on the labelled set is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from abi_tui.personas.router import PersonaRouter

LABELLED = Path(__file__).resolve().parents[1] / "tests" / "personas" / "labelled_set.json"

_NAIVE = {
    "abi": ("rm -rf", "malware", "ransomware", "keylogger", "bomb", "gun", "address", "dox",
            "ignore previous", "safety", "persona", "route", "abbey", "aviva"),
    "abbey": ("frustrat", "confus", "stress", "anxious", "sad", "disappoint", "overwhelm", "hi",
              "hello", "thank", "explain", "learn", "understand", "feel", "know", "help"),
    "aviva": ("python", "code", "function", "error", "go", "git", "docker", "sql", "api", "bash",
              "config", "install", "port", "ls", "now", "how do i", "regex", "linux"),
}


def naive_route(content: str) -> str:
    text = content.lower()
    scores = {p: sum(kw in text for kw in kws) for p, kws in _NAIVE.items()}
    if scores["abi"]:
        return "abi"
    return "aviva" if scores["aviva"] > scores["abbey"] else "abbey"


def lower_split(content: str) -> list[str]:
    return content.lower().split()


def measure(fn: Callable[[str], object], messages: list[str], rounds: int,
            clock: Callable[[], int]) -> list[float]:
    """Per-call times in milliseconds, every message `rounds` times."""
    for message in messages:  # warm-up
        fn(message)
    samples: list[float] = []
    for _ in range(rounds):
        for message in messages:
            start = clock()
            fn(message)
            samples.append((clock() - start) / 1e6)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "mean": statistics.fmean(ordered),
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max": ordered[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    cases = json.loads(LABELLED.read_text(encoding="utf-8"))
    messages = [case["message"] for case in cases]
    router = PersonaRouter()

    functions = {"PersonaRouter.route": router.route, "lower+split": lower_split,
                 "naive substring": naive_route}
    print(f"{len(messages)} messages x {args.rounds} rounds = {len(messages) * args.rounds} calls "
          f"per function; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for label, clock in (("wall clock", time.perf_counter_ns), ("thread CPU time", time.thread_time_ns)):
        results = {name: summary(measure(fn, messages, args.rounds, clock))
                   for name, fn in functions.items()}
        print(f"\n{label:22} {'mean ms':>10} {'p50 ms':>10} {'p99 ms':>10} {'max ms':>10}")
        for name, row in results.items():
            print(f"{name:22} {row['mean']:10.4f} {row['p50']:10.4f} {row['p99']:10.4f} "
                  f"{row['max']:10.4f}")
        ours = results["PersonaRouter.route"]
        for name in ("lower+split", "naive substring"):
            print(f"router / {name}: mean x{ours['mean'] / results[name]['mean']:.1f}, "
                  f"p99 x{ours['p99'] / max(results[name]['p99'], 1e-6):.1f}")
        verdict = "OK" if ours["p99"] < 5 else "over 5 ms (is the machine busy?)"
        print(f"p99 {ours['p99']:.3f} ms vs 5 ms target: {verdict}")

    accuracy = sum(router.route(c["message"]).persona == c["expected"] for c in cases) / len(cases)
    naive = sum(naive_route(c["message"]) == c["expected"] for c in cases) / len(cases)
    print(f"accuracy on the labelled set: router {accuracy:.1%}, naive substring {naive:.1%}")


if __name__ == "__main__":
    main()
