"""The layering in pyproject.toml's [tool.importlinter] holds: services never import the
dashboard, the dashboard reaches the server only through client.py, services import downwards.
A new import that breaks one fails here, with lint-imports' chain of imports in the message."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = (
    "Services never import Textual or the dashboard",
    "The dashboard reaches the server only through client.py",
    "Services import downwards only",
)


def lint_imports() -> str:
    beside = Path(sys.executable).with_name("lint-imports")
    command = str(beside) if beside.exists() else shutil.which("lint-imports")
    assert command, "lint-imports is missing: install the test extra (import-linter)"
    return command


def test_import_contracts_are_kept() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([lint_imports(), "--no-cache"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    for name in CONTRACTS:
        assert f"{name} KEPT" in report, report
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in report, report
