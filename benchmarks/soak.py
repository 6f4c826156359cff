"""The reliability suite, long (issue 11): tests/reliability with soak sizes, then its figures.

CI runs tests/reliability with short defaults (seconds per test). This runs the same tests with
the sizes of the issue (200 clients for 60 s, many more faults and fuzz cases) and prints what
each test measured: clients held, errors, memory before/after, faults injected and survived,
fuzz cases run, hostile inputs tried. docs/RELIABILITY.md quotes its last run.

Usage: python benchmarks/soak.py [--seconds 60] [--clients 200] [--quick] [--json FILE] [-- PYTEST ARGS]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def soak_environment(args: argparse.Namespace, report: Path) -> dict[str, str]:
    scale = 0.2 if args.quick else 1.0
    sizes = {
        "LOAD_CLIENTS": args.clients,
        "LOAD_SECONDS": args.seconds * scale,
        "OVERFLOW_SECONDS": max(5.0, args.seconds * scale / 2),
        "DISCONNECTS": int(1000 * scale),
        "SLOW_READERS": int(60 * scale),
        "KILL_CYCLES": max(2, int(6 * scale)),
        "API_EXAMPLES": int(100 * scale),
        "PROPERTY_EXAMPLES": int(2000 * scale),
    }
    env = {**os.environ, "ABI_SOAK_REPORT": str(report)}
    env.update({f"ABI_SOAK_{key}": str(value) for key, value in sizes.items()})
    return env


def summarize(rows: list[dict]) -> dict:
    def total(key: str) -> int:
        return sum(int(r.get(key, 0) or 0) for r in rows)

    load = next((r for r in rows if r["test"].endswith("test_200_concurrent_streaming_clients")), {})
    overflow = next((r for r in rows if "queue_overflow" in r["test"]), {})
    return {
        "clients_held": load.get("clients_held"), "load_seconds": load.get("seconds"),
        "streams_completed": load.get("streams"), "tokens": load.get("tokens"),
        "load_errors": load.get("errors"), "rss_before_mb": load.get("rss_before_mb"),
        "rss_peak_mb": load.get("rss_peak_mb"), "rss_after_mb": load.get("rss_after_mb"),
        "overflow_refusals_429": overflow.get("refusals"), "overflow_wrong_refusals": overflow.get("wrong_refusals"),
        "overflow_streams_completed": overflow.get("streams"), "overflow_errors": overflow.get("errors"),
        "faults_injected": total("faults_injected"), "faults_survived": total("faults_survived"),
        "fuzz_cases_api": total("fuzz_cases"), "fuzz_cases_property": total("property_cases"),
        "hostile_inputs": total("hostile_inputs"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration (default 60)")
    parser.add_argument("--clients", type=int, default=200, help="concurrent streaming clients (default 200)")
    parser.add_argument("--quick", action="store_true", help="a fifth of the sizes, to try the script")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "figures.jsonl"
        started = time.monotonic()
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/reliability",
                   *args.pytest_args]
        print("running:", " ".join(command), flush=True)
        result = subprocess.run(command, cwd=REPO, env=soak_environment(args, report))
        rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    elapsed = time.monotonic() - started
    print(f"\nreliability soak: pytest exit {result.returncode}, {elapsed:.0f} s\n")
    for row in rows:
        name = row["test"].split("::")[-1]
        figures = ", ".join(f"{k}={v}" for k, v in row.items() if k != "test")
        print(f"  {name}\n      {figures}")
    summary = summarize(rows)
    print("\nsummary")
    for key, value in summary.items():
        print(f"  {key:28} {value}")
    if args.json:
        args.json.write_text(json.dumps({"exit": result.returncode, "seconds": round(elapsed), "summary": summary,
                                         "tests": rows}, indent=2))
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
