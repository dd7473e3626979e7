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
                         background=self._canvas(),
                         alignment="left")
            # plotext drops the x label when it and the y label do not fit on their one row: the x
            # axis (with its unit) went unlabelled at 80 columns. The y axis is named in the title.
            plt.xlabel(xlabel)
            plt.title(f"quality vs speed   (y: {ylabel})")
        self.refresh()

    def on_mount(self) -> None:
        super().on_mount()
        # the labels' background is the theme's: drawn again in the new one
        self.app.theme_changed_signal.subscribe(self, lambda _t: self.show(self.ylabel, self.points, self.xlabel,
                                                                           self.colours))

    def _canvas(self) -> tuple[int, int, int] | str:
        """The plot's own background (textual-plotext paints it in the theme's surface colour): plotext
        drew the labels on white boxes, glaring in the dark theme."""
        from textual.color import Color

        try:
            return Color.parse(self.app.theme_variables["surface"]).rgb
        except Exception:  # noqa: BLE001 - no app or theme yet: the terminal's own
            return "default"

    def render(self):
        if not self.points:
            return Text(self.empty_text, justify="center", style="dim")
        return super().render()
