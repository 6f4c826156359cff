"""The Bench pane's live charts (plotext through textual-plotext): ITL over time, a TTFT
histogram, aggregate tok/s per scenario.

Importing this module imports plotext: the Bench pane imports it only when it first shows the
charts, so `abi dash` paints its first frame without it.
"""

from __future__ import annotations

from textual_plotext import PlotextPlot

from abi_tui.widgets.bench_live import LiveRun

# Scenario lines of the tok/s chart, in order; plotext's names, readable on dark and light.
SERIES_COLORS = ("cyan", "magenta", "green", "orange", "blue", "red")
TTFT_BINS = 15


class LiveChart(PlotextPlot):
    """A chart drawn from a LiveRun; `show` replaces its data and redraws once."""

    DEFAULT_CSS = """
    LiveChart {
        height: 1fr;
        min-height: 6;
    }
    """

    def show(self, run: LiveRun) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        self.draw(run)
        self.refresh()

    def draw(self, run: LiveRun) -> None:
        raise NotImplementedError


class ItlChart(LiveChart):
    def draw(self, run: LiveRun) -> None:
        plt = self.plt
        xs, means, peaks = run.itl.series()
        if not xs:
            plt.title("ITL over time (ms) — waiting for the measured phase")
            return
        plt.title(f"ITL over time (ms): mean and max per {run.itl.width_s * 1000:.0f} ms, {run.itl.count:,} gaps")
        plt.plot(xs, peaks, label="max", color="orange", marker="braille")
        plt.plot(xs, means, label="mean", color="cyan", marker="braille")
        plt.xlabel("s since start")
        plt.ylim(0, None)


class TtftChart(LiveChart):
    def draw(self, run: LiveRun) -> None:
        plt = self.plt
        values = run.ttft_ms
        if not values:
            plt.title("TTFT histogram (ms) — no request finished yet")
            return
        plt.title(f"TTFT (ms), {len(values):,} requests")
        plt.hist(values, bins=min(TTFT_BINS, max(5, len(values))), color="cyan")
        plt.xlabel("ms")


class RateChart(LiveChart):
    def draw(self, run: LiveRun) -> None:
        plt = self.plt
        if not run.rates:
            plt.title("Output tok/s — no request finished yet")
            return
        plt.title("Output tok/s (aggregate, per scenario)")
        for index, (label, points) in enumerate(run.rates.items()):
            plt.plot([t for t, _ in points], [r for _, r in points], label=label,
                     color=SERIES_COLORS[index % len(SERIES_COLORS)], marker="braille")
        plt.xlabel("s since start")
        plt.ylim(0, None)
