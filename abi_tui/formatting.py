"""How the dashboard writes sizes, rates, durations and times.

A `Formatter` with `frozen=True` writes every time-dependent value (clock times, uptime, rates,
ETAs, load times) as a fixed value: snapshot tests render real server data deterministically
without patching the clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from abi_tui.models.units import human_bytes  # one way to write sizes, CLI and UI alike


def human_count(n: int | None) -> str:
    """Parameter counts and context lengths: 268M, 7.6B, 32K."""
    if not n:
        return "-"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            value = n / scale
            text = f"{value:.0f}" if value >= 100 or value == int(value) else f"{value:.1f}"
            return text + unit
    return str(n)


def human_ctx(n: int | None) -> str:
    """Context lengths are powers of two: 4096 -> 4K, 131072 -> 128K."""
    if not n:
        return "-"
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def human_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        return f"{hours // 24}d {hours % 24}h"
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class Formatter:
    frozen: bool = False

    def clock(self, ts: float | None) -> str:
        if self.frozen:
            return "12:00:00"
        return time.strftime("%H:%M:%S", time.localtime(ts if ts is not None else time.time()))

    def uptime(self, seconds: float | None) -> str:
        return "0:42" if self.frozen else human_duration(seconds)

    def rate(self, bps: float | None) -> str:
        if self.frozen:
            return "1.0 MB/s"
        return "-" if not bps else f"{human_bytes(bps)}/s"

    def eta(self, seconds: float | None) -> str:
        if self.frozen:
            return "0:05"
        return human_duration(seconds)

    def ms(self, value: float | None) -> str:
        if self.frozen:
            return "12 ms"
        if value is None:
            return "-"
        return f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"

    def seconds(self, value: float | None) -> str:
        if value is None:
            return "-"
        return "1s" if self.frozen else f"{value:.0f}s"

    def scrub(self, text: str, url: str | None) -> str:
        """Messages that quote the server's address (a random port in tests)."""
        return text.replace(url, self.address(url)) if self.frozen and url else text

    def address(self, url: str | None) -> str:
        if not url:
            return "-"
        return "http://127.0.0.1:8420" if self.frozen else url
