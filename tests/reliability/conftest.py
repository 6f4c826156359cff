"""The reliability suite (issue 11): load, faults, fuzzing and hostile input.

Sizes and durations are knobs: CI runs the defaults here (seconds per test); benchmarks/soak.py
sets `ABI_SOAK_<NAME>` for the long run and collects the figures every test records through the
`figures` fixture (one JSON line per test in `$ABI_SOAK_REPORT`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

# Read at import: the autouse abi_home fixture clears every ABI_* variable during a test.
REPORT = os.environ.get("ABI_SOAK_REPORT")

def knob(name: str, default: Any) -> Any:
    """`ABI_SOAK_<NAME>` from the environment, converted to the default's type."""
    value = os.environ.get(f"ABI_SOAK_{name.upper()}")
    return type(default)(value) if value else default


class Figures:
    """What a test measured: clients held, errors, memory, faults injected and survived, cases."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def set(self, **values: Any) -> None:
        self.data.update(values)

    def count(self, key: str, n: int = 1) -> None:
        self.data[key] = self.data.get(key, 0) + n


@pytest.fixture
def figures(request: pytest.FixtureRequest):
    recorded = Figures()
    yield recorded
    if not recorded.data:
        return
    request.node.user_properties.append(("figures", recorded.data))
    if REPORT:
        with open(REPORT, "a", encoding="utf-8") as out:
            out.write(json.dumps({"test": request.node.nodeid, **recorded.data}) + "\n")
