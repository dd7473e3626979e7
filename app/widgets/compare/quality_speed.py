"""Quality vs speed in the terminal (textual-plotext): one point per model of eval/results.json,
decode tokens/s at the smallest batch against the mean task score (or validation loss), teacher,
depth, width and search students told apart by marker and colour. The points come from the engine's
own `compare` (engine.compare.charts.quality_speed_points), the PNG's data."""

from __future__ import annotations

from rich.text import Text
from textual_plotext import PlotextPlot

# method -> (plotext marker, colour), readable on the light and the dark theme
STYLE = {"teacher": ("★", "gray"), "depth": ("●", "blue"), "width": ("■", "orange"), "search": ("◆", "green")}
OTHER = ("◆", "magenta")


class QualitySpeedChart(PlotextPlot):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.points: list[tuple[str, str, float, float]] = []  # (label, method, x, y)
        self.ylabel = ""
        self.xlabel = ""
        self.colours: dict[str, str] = {}
        self.empty_text = "no decode speed in eval/results.json of the ticked runs (eval with speed = true)"

    def show(self, ylabel: str, points: list[tuple[str, str, float, float]], xlabel: str,
             colours: dict[str, str] | None = None) -> None:
        """`colours`: a point's colour by its label (its student's, as in Compare's other views);
        the marker still tells the method. Without them, one colour per method, with a legend."""
        self.points, self.ylabel, self.xlabel = points, ylabel, xlabel
        self.colours = colours = colours or {}
        plt = self.plt
        plt.clear_figure()
        if points:
            for method in dict.fromkeys(m for _, m, _, _ in points):
                marker, color = STYLE.get(method, OTHER)
                for label, _m, x, y in [p for p in points if p[1] == method]:
                    plt.scatter([x], [y], marker=marker, color=colours.get(label, color),
                                label=None if colours else method or "?")
            xs, ys = [p[2] for p in points], [p[3] for p in points]
            xspan = (max(xs) - min(xs)) or abs(xs[0]) or 1.0
            yspan = (max(ys) - min(ys)) or abs(ys[0]) or 1.0
            # room around the points, and to their right for the labels
            plt.xlim(max(0.0, min(xs) - 0.1 * xspan), max(xs) + 0.45 * xspan)  # no negative speeds
            plt.ylim(min(ys) - 0.15 * yspan, max(ys) + 0.15 * yspan)
            for label, method, x, y in points:
                plt.text(label, x + 0.03 * xspan, y, color=colours.get(label, STYLE.get(method, OTHER)[1]),
                         alignment="left")
            plt.xlabel(xlabel)
            plt.ylabel(ylabel)
            plt.title("quality vs speed")
        self.refresh()

    def render(self):
        if not self.points:
            return Text(self.empty_text, justify="center", style="dim")
        return super().render()
