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
        self.empty_text = "no decode speed in eval/results.json of the ticked runs (eval with speed = true)"

    def show(self, ylabel: str, points: list[tuple[str, str, float, float]], xlabel: str) -> None:
        self.points, self.ylabel, self.xlabel = points, ylabel, xlabel
        plt = self.plt
        plt.clear_figure()
        if points:
            for method in dict.fromkeys(m for _, m, _, _ in points):
                marker, color = STYLE.get(method, OTHER)
                mine = [p for p in points if p[1] == method]
                plt.scatter([p[2] for p in mine], [p[3] for p in mine], marker=marker, color=color,
                            label=method or "?")
            xs, ys = [p[2] for p in points], [p[3] for p in points]
            xspan = (max(xs) - min(xs)) or abs(xs[0]) or 1.0
            yspan = (max(ys) - min(ys)) or abs(ys[0]) or 1.0
            # room around the points, and to their right for the labels
            plt.xlim(min(xs) - 0.1 * xspan, max(xs) + 0.45 * xspan)
            plt.ylim(min(ys) - 0.15 * yspan, max(ys) + 0.15 * yspan)
            for label, method, x, y in points:
                plt.text(label, x + 0.03 * xspan, y, color=STYLE.get(method, OTHER)[1], alignment="left")
            plt.xlabel(xlabel)
            plt.ylabel(ylabel)
            plt.title("quality vs speed")
        self.refresh()

    def render(self):
        if not self.points:
            return Text(self.empty_text, justify="center", style="dim")
        return super().render()
