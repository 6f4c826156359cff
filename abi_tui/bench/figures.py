"""What the console report (`abi bench`) and the Bench pane both print: the latency rows of a
scenario summary, and how a figure is read out of a result and written.

Light on purpose (no numpy, no aiohttp): the dashboard imports it when the Bench pane mounts.
"""

from __future__ import annotations

from typing import Any

# Short labels: the tables must fit an 80-column terminal; the definitions say what each is.
LATENCY_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("TTFT", ("ttft_ms",)), ("ITL", ("itl_ms",)), ("TPOT", ("tpot_ms",)), ("E2E", ("e2e_ms",)),
    ("server TTFT", ("server", "ttft_ms")), ("server total", ("server", "total_ms")),
    ("TTFT gap c-s", ("server", "ttft_gap_ms")), ("E2E gap c-s", ("server", "e2e_gap_ms")),
    ("ITL overhead", ("pipeline_overhead", "itl_diff_ms")),
    ("TTFT overhead", ("pipeline_overhead", "ttft_diff_ms")),
    ("schedule lag", ("schedule_lag_ms",)),
)


def dig(data: Any, *path: str) -> Any:
    """data[path[0]][path[1]]..., or None where a level is missing."""
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def num(value: Any, digits: int = 2) -> str:
    """A figure with thousands separators; N/A for a value that does not apply (null in the JSON)."""
    if value is None:
        return "N/A"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"
