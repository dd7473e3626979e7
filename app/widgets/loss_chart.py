"""Loss curves in the terminal (textual-plotext), shared by Run detail and Compare."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual_plotext import PlotextPlot

from app.data.series import downsample, ema

# plotext colour names readable on both the light and the dark theme
PALETTE = ("blue", "red", "green", "magenta", "cyan", "orange", "gray")


@dataclass
class Curve:
    label: str
    xs: list[float]
    ys: list[float]
    color: str = "blue"
    smooth: bool = True  # EMA applies (val curves with few points are drawn as they are)
    points: bool = False  # a scatter (e.g. the single "loss after pruning" point)


class LossChart(PlotextPlot):
    """`show(curves, ...)` replaces what is drawn; points are thinned to what the width can show."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.curves: list[Curve] = []
        self.xlabel = "step"
        self.smoothing = 0.0
        self.empty_text = "no metrics yet"
        self.held = False  # draw nothing until release() (a screen's first frames, see Run detail)
        self._version = 0  # bumped by every _draw: what the built figure is for
        self._drawn_width: int | None = None
        self._built: tuple[tuple, Text] | None = None

    def show(self, curves: list[Curve], xlabel: str = "step", smoothing: float = 0.0) -> None:
        self.curves, self.xlabel, self.smoothing = curves, xlabel, smoothing
        self._draw()

    def release(self) -> None:
        if self.held:
            self.held = False
            self.refresh()

    def on_resize(self) -> None:
        if self.size.width != self._drawn_width:  # the curves are thinned for the width
            self._draw()
        else:
            self.refresh()

    def render(self):
        """Plotext's figure, built once per drawing, size and theme (a refresh with none of them
        changed, e.g. the resize that follows a screen's first layout, reuses it: ~10-15 ms a
        build on a small CPU); with nothing to plot, just the empty text."""
        if self.held:
            return Text("")
        if not any(c.ys for c in self.curves):
            return Text(self.empty_text, justify="center", style="dim")
        key = (self._version, self.size, self.app.theme, self.theme)
        if self._built is None or self._built[0] != key:
            self._built = (key, super().render())
        return self._built[1]

    def _draw(self) -> None:
        self._version += 1
        self._drawn_width = self.size.width
        if not any(c.ys for c in self.curves):  # render() shows the empty text, not the figure
            self.refresh()
            return
        plt = self.plt
        plt.clear_figure()
        max_points = max(2 * (self.size.width or 80), 64)  # braille: 2 dots per cell
        lines = [c for c in self.curves if c.ys and not c.points and len(c.ys) > 1]
        xs_all = [x for c in self.curves for x in (c.xs[:1] + c.xs[-1:]) if c.ys]
        x_range = (min(xs_all), max(xs_all)) if lines else None
        for c in self.curves:
            if not c.ys:
                continue
            if (c.points or len(c.ys) == 1) and x_range is not None:
                # a single value (loss right after pruning): a reference line across the chart,
                # so each distilled curve can be read against its pruned-only starting point
                plt.plot(list(x_range), [c.ys[-1]] * 2, label=c.label, color=c.color, marker="dot")
            elif c.points or len(c.ys) == 1:
                plt.scatter(c.xs, c.ys, label=c.label, color=c.color, marker="dot")
            else:
                ys = ema(c.ys, self.smoothing) if c.smooth else c.ys
                xs, ys = downsample(c.xs, ys, max_points)
                plt.plot(xs, ys, label=c.label, color=c.color, marker="braille")
        plt.xlabel(self.xlabel)
        self.refresh()
