"""What the Bench pane's live charts show, accumulated from the benchmark's LiveSamples.

Plain Python (no Textual, no plotext): the pane feeds it on the UI loop, the charts read it.
Memory and redraw cost stay bounded however long the run: ITL gaps are folded into time bins
that coarsen as the run grows (a comprehensive preset streams ~300k gaps), and the tok/s
series is thinned when it gets long.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_BINS = 240        # more than a chart's width in columns: binning never shows
MAX_RATE_POINTS = 600


class TimeBins:
    """(t, value) points folded into fixed-width time bins (count, sum, max per bin); when
    there are more than `max_bins` bins the width doubles and neighbours merge."""

    def __init__(self, width_s: float = 0.05, max_bins: int = MAX_BINS) -> None:
        self.width_s = width_s
        self.max_bins = max_bins
        self.bins: dict[int, list[float]] = {}
        self.count = 0

    def add(self, t_s: float, value: float) -> None:
        key = int(t_s // self.width_s)
        slot = self.bins.get(key)
        if slot is None:
            self.bins[key] = [1, value, value]
        else:
            slot[0] += 1
            slot[1] += value
            slot[2] = max(slot[2], value)
        self.count += 1
        if len(self.bins) > self.max_bins:
            self._coarsen()

    def _coarsen(self) -> None:
        self.width_s *= 2
        merged: dict[int, list[float]] = {}
        for key, (count, total, peak) in self.bins.items():
            slot = merged.setdefault(key // 2, [0, 0.0, peak])
            slot[0] += count
            slot[1] += total
            slot[2] = max(slot[2], peak)
        self.bins = merged

    def series(self) -> tuple[list[float], list[float], list[float]]:
        """Bin centres, mean per bin, max per bin, in time order."""
        xs, means, peaks = [], [], []
        for key in sorted(self.bins):
            count, total, peak = self.bins[key]
            xs.append(round((key + 0.5) * self.width_s, 4))
            means.append(total / count)
            peaks.append(peak)
        return xs, means, peaks


@dataclass
class LiveRun:
    """One run as the pane shows it while it goes: progress and the data of the three charts
    (measured phases only: warm-up requests are thrown away by the benchmark too)."""

    title: str = ""
    scenarios: int = 0
    scenario: str = ""
    phase: str = ""
    level: int | None = None
    done: int = 0
    planned: int | None = None
    errors: int = 0
    last_error: str | None = None
    t_s: float = 0.0
    tokens_per_s: float | None = None
    scenarios_seen: list[str] = field(default_factory=list)
    itl: TimeBins = field(default_factory=TimeBins)
    ttft_ms: list[float] = field(default_factory=list)
    # scenario label -> (t_s, aggregate tok/s of its measured phase so far)
    rates: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    version: int = 0  # bumped on every change: charts redraw only when it moved

    def add(self, sample: Any) -> None:
        """One LiveSample (abi_tui.bench.LiveSample)."""
        self.version += 1
        self.t_s = max(self.t_s, sample.t_s)
        label = sample.scenario + (f" c={sample.level}" if sample.level else "")
        if sample.event == "phase":
            self.scenario, self.phase, self.level = sample.scenario, sample.phase, sample.level
            self.done, self.planned, self.errors, self.tokens_per_s = 0, sample.planned, 0, None
            if sample.scenario not in self.scenarios_seen:
                self.scenarios_seen.append(sample.scenario)
            return
        self.done, self.planned, self.errors = sample.done, sample.planned, sample.errors
        if sample.error:
            self.last_error = sample.error
        if sample.phase != "measure":
            return
        self.tokens_per_s = sample.tokens_per_s
        for t_s, gap_ms in sample.itl:
            self.itl.add(t_s, gap_ms)
        if sample.ttft_ms is not None:
            self.ttft_ms.append(sample.ttft_ms)
        if sample.tokens_per_s is not None:
            points = self.rates.setdefault(label, [])
            points.append((sample.t_s, sample.tokens_per_s))
            if len(points) > MAX_RATE_POINTS:
                del points[1::2]

    @property
    def scenario_index(self) -> int:
        return len(self.scenarios_seen)
