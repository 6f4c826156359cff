"""`abi bench streaming` through its entry point, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "BENCH.md"


def abi(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "abi_tui.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ), cwd=REPO)


def documented_fields() -> list[str]:
    """The field paths of the JSON table in docs/BENCH.md."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## JSON result", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z0-9_.\[\]]+)` \|", section, flags=re.MULTILINE)


def resolve(data: Any, path: str) -> list[str]:
    """Paths that are missing in `data` ([] = every element of a list; null stops the walk)."""
    missing = []

    def walk(value: Any, parts: list[str], where: str) -> None:
        if not parts or value is None:
            return
        head, rest = parts[0], parts[1:]
        key = head.removesuffix("[]")
        if not isinstance(value, dict) or key not in value:
            missing.append(f"{where}.{key}".lstrip("."))
            return
        value = value[key]
        if head.endswith("[]"):
            if not isinstance(value, list) or not value:
                missing.append(f"{where}.{head} (empty)".lstrip("."))
                return
            for item in value:
                walk(item, rest, f"{where}.{head}")
        else:
            walk(value, rest, f"{where}.{key}")

    walk(data, path.split("."), "")
    return missing


def test_quick_preset_json_under_two_minutes(abi_home: Path) -> None:
    started = time.monotonic()
    done = abi("bench", "streaming", "--preset", "quick", "--json", "--slo", "ttft=200ms,itl=50ms")
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert elapsed < 120, elapsed
    result = json.loads(done.stdout)

    fields = documented_fields()
    assert len(fields) > 80
    missing = [m for field in fields for m in resolve(result, field)]
    assert not missing, missing

    assert result["target"]["embedded"] and result["target"]["route"] == "abi"
    names = [s["name"] for s in result["scenarios"]]
    assert names == ["constant_rate", "variable_rate"]
    for scenario in result["scenarios"]:
        summary = scenario["summary"]
        assert summary["requests"] == {"total": 50, "completed": 50, "errors": 0, "error_kinds": {}}
        assert len(scenario["requests"]) == 50  # warm-up excluded
        assert {r["max_tokens"] for r in scenario["requests"]} == {32, 64}
        assert summary["output_tokens"] == 25 * 32 + 25 * 64
        assert summary["pipeline_overhead"]["available"] and summary["server"]["available"]
        assert summary["goodput"]["slo"] == {"ttft_ms": 200.0, "itl_ms": 50.0}
        assert scenario["energy"]["available"] or scenario["energy"]["reason"]
    assert set(result["definitions"]) >= {"ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "goodput", "pipeline_overhead_ms"}

    saved = sorted(p.name for p in (abi_home / "bench").iterdir())
    run_id = result["run_id"]
    assert saved == [f"{run_id}.csv", f"{run_id}.json", f"{run_id}.summary.csv"]
    assert json.loads((abi_home / "bench" / f"{run_id}.json").read_text())["run_id"] == run_id


def test_table_output_and_csv_file(abi_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "requests.csv"
    done = abi("bench", "streaming", "--pattern", "burst", "--requests", "3", "--max-tokens", "8",
               "--rate", "20", "-o", str(out))
    assert done.returncode == 0, done.stderr
    for needle in ("Summary", "mock/burst", "open loop, constant 20 req/s", "schedule lag", "Definitions",
                   "Encoding", "GPU energy"):
        assert needle in done.stdout, needle
    assert out.read_text().splitlines()[0].startswith("run_id,scenario,index")
    assert len(out.read_text().splitlines()) == 4


@pytest.mark.parametrize("args, reason", [
    (("--concurrency", "0"), "positive integer"),
    (("--concurrency", "2", "--rate", "3"), "not allowed with"),
    (("--slo", "ttft=fast"), "bad SLO value"),
    (("--preset", "huge"), "invalid choice"),
    (("--pattern", "burst", "--model", "mock/burst"), "either --pattern or --model"),
    (("--pattern", "zigzag"), "unknown pattern"),
    (("--transport", "carrier-pigeon"), "invalid choice"),
])
def test_bad_flags_exit_2_with_one_line(args: tuple[str, ...], reason: str) -> None:
    done = abi("bench", "streaming", *args, timeout=30)
    assert done.returncode == 2
    assert reason in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_unreachable_url_exits_2() -> None:
    done = abi("bench", "streaming", "--url", "http://127.0.0.1:9", "--requests", "1", timeout=30)
    assert done.returncode == 2 and "cannot reach http://127.0.0.1:9" in done.stderr
