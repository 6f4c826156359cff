"""A card per GPU: utilization and memory bars, temperature, power, fan, clocks.

Readings the device or driver cannot give are None in the record and "N/A" here (nvitop's
convention), so an unsupported fan never looks like a stopped one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.content import Content
from textual.widget import Widget

from abi_tui.formatting import human_bytes
from abi_tui.telemetry.schema import na

if TYPE_CHECKING:
    from abi_tui.telemetry.schema import GpuRecord

LABEL = 6  # "util  ", "mem   "
VALUE = 13  # the right-hand column: "37%", "9.7/25.8 GB"


def level_style(percent: float | None) -> str:
    """Green, yellow, red by load, as nvitop colours its bars."""
    if percent is None:
        return "$text-muted"
    return "$success" if percent < 50 else ("$warning" if percent < 80 else "$error")


def temperature_style(celsius: float | None) -> str:
    if celsius is None:
        return "$text-muted"
    return "$error" if celsius >= 85 else ("$warning" if celsius >= 75 else "")


def bar(percent: float | None, width: int) -> Content:
    """A bar of background-coloured cells: exact in every terminal and font (block glyphs
    are drawn wider than a cell by some fonts, and in SVG screenshots)."""
    width = max(1, width)
    if percent is None:
        return Content.styled("·" * width, "$text-muted")
    filled = round(max(0.0, min(100.0, percent)) / 100 * width)
    return Content.assemble((" " * filled, f"on {level_style(percent)}"), (" " * (width - filled), "on $panel"))


def memory_text(used: int | None, total: int | None) -> str:
    if used is None or total is None:
        return na(None)
    # One unit for both numbers: "9.7/25.8 GB"; human_bytes picks it from the total.
    unit = human_bytes(total).split()[-1]
    scale = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]
    return f"{used / scale:.1f}/{total / scale:.1f} {unit}"


def power_text(watts: float | None, limit: float | None) -> str:
    if watts is None:
        return na(None)
    return f"{watts:.0f}/{limit:.0f} W" if limit is not None else f"{watts:.0f} W"


def clock_text(now: int | None, peak: int | None) -> str:
    if now is None:
        return na(None)
    return f"{now}/{peak} MHz" if peak is not None else f"{now} MHz"


def memory_percent(record: GpuRecord) -> float | None:
    if record.memory_used_bytes is None or not record.memory_total_bytes:
        return None
    return record.memory_used_bytes / record.memory_total_bytes * 100


def card_content(record: GpuRecord, width: int) -> Content:
    muted = "$text-muted"
    bar_width = max(4, width - LABEL - VALUE - 1)
    util = record.utilization_pct
    lines = [
        Content.assemble(("util  ", muted), bar(util, bar_width), f" {na(util, '{}%'):<{VALUE}}"),
        Content.assemble(("mem   ", muted), bar(memory_percent(record), bar_width),
                         f" {memory_text(record.memory_used_bytes, record.memory_total_bytes):<{VALUE}}"),
        Content.assemble(("temp ", muted), (na(record.temperature_c, "{}°C"), temperature_style(record.temperature_c)),
                         ("  fan ", muted), na(record.fan_pct, "{}%"),
                         ("  power ", muted), power_text(record.power_w, record.power_limit_w),
                         ("  mem util ", muted), na(record.memory_utilization_pct, "{}%")),
        Content.assemble(("clock ", muted), clock_text(record.clock_graphics_mhz, record.clock_graphics_max_mhz),
                         ("  sm ", muted), na(record.clock_sm_mhz),
                         ("  mem ", muted), clock_text(record.clock_memory_mhz, record.clock_memory_max_mhz)),
    ]
    if record.error:
        # The device failed mid-read: say why first; what it did report still follows.
        lines = [Content.styled(f"error: {record.error}", "$error"), *lines[:3]]
    return Content("\n").join(line.truncate(width, ellipsis=True) for line in lines)


class GpuCard(Widget):
    """One GPU from the latest sample; `show(record)` replaces what it displays."""

    DEFAULT_CSS = """
    GpuCard {
        height: 6;
        width: 1fr;
        min-width: 44;
        border: round $panel;
        padding: 0 1;
        border-title-color: $primary;
        border-title-style: bold;
        border-subtitle-color: $text-muted;
    }
    GpuCard.-error {
        border: round $error;
    }
    """

    def __init__(self, record: GpuRecord, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.record = record
        self.show(record)

    def show(self, record: GpuRecord) -> None:
        self.record = record
        self.border_title = f"GPU {record.index} · {record.name or na(None)}"
        processes = len(record.processes)
        self.border_subtitle = f"{processes} process{'es' if processes != 1 else ''}"
        self.set_class(bool(record.error), "-error")
        self.refresh()

    def render(self) -> Content:
        return card_content(self.record, self.size.width)
