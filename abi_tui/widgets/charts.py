"""History charts drawn with plotext (textual-plotext): one line (or stacked area) per series
over the last N samples, newest at the right edge, like nvitop's history graphs.

Importing this module imports plotext (~150 ms): panes import it when a chart is first
needed, never while `abi dash` paints its first frame.

A chart only stores data in `show()`; plotext builds the picture in `render()`, which Textual
calls only for a visible widget whose data or size changed, so charts in a hidden pane cost
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rich.text import Text
from textual.app import RenderResult
from textual.color import Color
from textual_plotext import PlotextPlot

# Plotext connects the points of one call: a gap (None) splits a series into several calls.
Value = float | None


@dataclass
class Series:
    label: str
    values: Sequence[Value]
    color: str  # a theme variable ("primary", "warning", ...) or a colour Textual can parse
    shade: float = 0.0  # blend towards the background: shades of one colour tell kinds apart
    fill: bool = False  # fill down to the x axis (stacked areas)


@dataclass
class Marker:
    """A vertical line at one sample, labelled at the top (a model load or eviction)."""

    x: int  # samples before the newest one (0 = the newest, at the right edge)
    label: str
    color: str


@dataclass
class LegendEntry:
    label: str
    colors: list[tuple[str, float]] = field(default_factory=list)  # (color, shade) swatches


class HistoryChart(PlotextPlot):
    """A time series chart: `show(series, span=..., interval_s=...)` and the widget redraws."""

    DEFAULT_CSS = """
    HistoryChart {
        width: 1fr;
        height: 1fr;
        border: round $panel;
        border-title-color: $primary;
        border-title-style: bold;
        border-subtitle-color: $text-muted;
    }
    """

    def __init__(self, title: str = "", *, y_format: Callable[[float], str] | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.border_title = title
        self.y_format = y_format or (lambda v: f"{v:g}")
        self.series: list[Series] = []
        self.markers: list[Marker] = []
        self.span = 60  # samples across the x axis
        self.y_range: tuple[float, float] = (0.0, 100.0)
        self.empty_text = "no data"
        self.renders = 0  # plotext builds done: tests check that a hidden chart does none

    def show(self, series: Sequence[Series], *, span: int, y_range: tuple[float, float] = (0.0, 100.0),
             markers: Sequence[Marker] = (), legend: Sequence[LegendEntry] | None = None,
             empty_text: str = "no data", subtitle: str = "") -> None:
        """New data: `series` values are aligned at the right edge (the newest sample)."""
        self.series = list(series)
        self.span = max(2, span)
        self.y_range = y_range
        self.markers = list(markers)
        self.empty_text = empty_text
        entries = legend if legend is not None else [LegendEntry(s.label, [(s.color, s.shade)]) for s in self.series]
        self._legend = list(entries)
        self._subtitle = subtitle
        if self.is_mounted:
            self.border_subtitle = self.legend_markup()
        self.refresh()

    def on_mount(self) -> None:
        super().on_mount()
        self.border_subtitle = self.legend_markup()

    # -- colours --------------------------------------------------------------------------
    def rgb(self, color: str, shade: float = 0.0) -> tuple[int, int, int]:
        variables = self.app.theme_variables
        base = Color.parse(variables.get(color, color))
        if shade:
            base = base.blend(Color.parse(variables.get("surface", "#000000")), shade)
        return base.rgb

    def legend_markup(self) -> str:
        if not self.is_mounted:
            return ""
        parts = []
        for entry in getattr(self, "_legend", []):
            swatches = "".join(f"[{Color(*self.rgb(c, s)).hex}]■[/]" for c, s in entry.colors)
            parts.append(f"{swatches} {entry.label}" if swatches else entry.label)
        subtitle = getattr(self, "_subtitle", "")
        return "  ".join(parts + ([subtitle] if subtitle else []))

    # -- drawing --------------------------------------------------------------------------
    def render(self) -> RenderResult:
        if self.size.width < 8 or self.size.height < 3:
            return Text("")
        self.replot()
        self.renders += 1
        return super().render()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_figure()
        low, high = self.y_range
        if high <= low:
            high = low + 1
        # x = samples before the newest one; the newest sits at 0, the right edge.
        plt.xlim(-(self.span - 1), 0)
        plt.ylim(low, high)
        plt.xticks([])
        plt.yticks([low, (low + high) / 2, high], [self.y_format(v) for v in (low, (low + high) / 2, high)])
        plt.xaxes(False, False)
        plt.yaxes(True, False)
        drawn = False
        # Braille draws two points per column: more only costs time (plotext is pure Python).
        factor = max(1, -(-self.span // max(2, 2 * (self.size.width - 6))))
        for series in self.series:
            color = self.rgb(series.color, series.shade)
            for xs, ys in runs(points(list(series.values)[-self.span:], factor)):
                drawn = True
                if len(xs) == 1:
                    plt.scatter(xs, ys, marker="braille", color=color)
                elif series.fill:
                    plt.plot(xs, ys, marker="hd", fillx=True, color=color)
                else:
                    plt.plot(xs, ys, marker="braille", color=color)
        # Labels alternate between the top two rows, so neighbouring markers do not overwrite
        # each other's text.
        row = (high - low) / max(1, self.size.height - 1)
        shown = [m for m in self.markers if -(self.span - 1) <= m.x <= 0]
        for number, marker in enumerate(shown):
            color = self.rgb(marker.color)
            plt.vline(marker.x, color)
            plt.text(marker.label, marker.x, high - (number % 2) * row, color=color, background=self.rgb("surface"),
                     alignment="left" if marker.x < -self.span / 2 else "right")
        if not drawn:
            plt.text(self.empty_text, -(self.span - 1) / 2, (low + high) / 2, alignment="center")


def points(values: Sequence[Value], factor: int = 1) -> list[tuple[float, Value]]:
    """(x, y) with x counted back from the newest sample (0). With `factor` > 1, each group of
    that many samples, counted from the newest, becomes one point at its newest sample with the
    group's highest value, so a short peak stays visible, as in nvitop's history graphs."""
    n = len(values)
    found: list[tuple[float, Value]] = []
    for end in range(n, 0, -factor):
        group = [v for v in values[max(0, end - factor):end] if v is not None]
        found.append((float(end - n), max(group) if group else None))
    found.reverse()
    return found


def runs(found: Sequence[tuple[float, Value]]) -> list[tuple[list[float], list[float]]]:
    """Contiguous stretches of known values as (xs, ys): a None splits the line."""
    stretches: list[tuple[list[float], list[float]]] = []
    xs: list[float] = []
    ys: list[float] = []
    for x, value in found:
        if value is None:
            if xs:
                stretches.append((xs, ys))
                xs, ys = [], []
            continue
        xs.append(x)
        ys.append(float(value))
    if xs:
        stretches.append((xs, ys))
    return stretches
