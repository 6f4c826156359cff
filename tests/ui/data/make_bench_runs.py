"""Regenerate the saved benchmark runs the Bench pane's tests show (tests/ui/data/bench/*.json).

Two real `abi bench streaming` runs of the quick preset (8 requests of 16 tokens per pattern),
at concurrency 4 and 8, with what varies between machines or runs (ids, dates, port, host,
telemetry series) replaced by fixed values, so snapshots stay the same:

    python tests/ui/data/make_bench_runs.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent / "bench"
RUNS = (
    ("20250502-140312-quick-a1b2", "2025-05-02T14:03:12+00:00", "4"),
    ("20250503-091500-quick-c3d4", "2025-05-03T09:15:00+00:00", "8"),
)


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for run_id, created, concurrency in RUNS:
        with tempfile.TemporaryDirectory() as home:
            out = Path(home) / "run.json"
            subprocess.run([sys.executable, "-m", "abi_tui.cli", "bench", "streaming", "--preset", "quick",
                            "--requests", "8", "--max-tokens", "16", "--concurrency", concurrency,
                            "--slo", "ttft=20ms,itl=12ms", "--json", "-o", str(out)],
                           check=True, stdout=subprocess.DEVNULL, env={**os.environ, "ABI_HOME": home})
            data = json.loads(out.read_text())
        data.update(run_id=run_id, created=created)
        data["target"]["url"] = "http://127.0.0.1:8420"
        data["environment"].update(hostname="bench-host", platform="Linux", python="3.11")
        telemetry = data["telemetry"]
        telemetry["client"] = telemetry["client"][:2]
        telemetry["server"] = (telemetry.get("server") or [])[:2]
        (HERE / f"{run_id}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
