"""Loss curves in the terminal (textual-plotext), shared by Run detail and Compare."""

from __future__ import annotations

import math
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
        self.log_y = False
        self.zoom = 1.0  # the part of the x range shown, the last one
        self.title = ""
        self.empty_text = "no metrics yet"
        self.held = False  # draw nothing until release() (a screen's first frames, see Run detail)
        self._version = 0  # bumped by every _draw: what the built figure is for
        self._drawn_width: int | None = None
        self._built: tuple[tuple, Text] | None = None

    def show(self, curves: list[Curve], xlabel: str = "step", smoothing: float = 0.0, log_y: bool = False,
             zoom: float = 1.0, title: str = "") -> None:
        """`log_y`: a log y axis; `zoom`: show only the last part of the x range (0.2: the last fifth);
        an x axis labelled "step..." gets whole-number ticks."""
        self.curves, self.xlabel, self.smoothing = curves, xlabel, smoothing
        self.log_y, self.zoom, self.title = log_y, zoom, title
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
        curves = zoomed(self.curves, self.zoom)
        lines = [c for c in curves if c.ys and not c.points and len(c.ys) > 1]
        xs_all = [x for c in curves for x in (c.xs[:1] + c.xs[-1:]) if c.ys]
        x_range = (min(xs_all), max(xs_all)) if lines else None
        for c in curves:
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
        if self.title:
            plt.title(self.title)
        if self.log_y and all(y > 0 for c in curves for y in c.ys):
            plt.yscale("log")
        if self.xlabel.startswith("step") and xs_all:
            ticks = int_ticks(min(xs_all), max(xs_all))
            plt.xticks(ticks, [str(t) for t in ticks])
        self.refresh()


def zoomed(curves: list[Curve], zoom: float) -> list[Curve]:
    """The curves' points in the last `zoom` part of their common x range (all of them at 1.0)."""
    xs = [x for c in curves for x in c.xs]
    if zoom >= 1.0 or not xs:
        return curves
    lo, hi = min(xs), max(xs)
    start = hi - (hi - lo) * zoom
    out = []
    for c in curves:
        keep = [i for i, x in enumerate(c.xs) if x >= start]
        out.append(Curve(c.label, [c.xs[i] for i in keep], [c.ys[i] for i in keep], c.color, c.smooth, c.points))
    return out


def int_ticks(lo: float, hi: float, most: int = 6) -> list[int]:
    """Whole-number x ticks (steps) at a round spacing (1, 2, 5 x 10^k): at most `most` of them."""
    first, last = math.ceil(lo), math.floor(hi)
    if last <= first:
        return [first] if first == last else [round(lo)]
    span = last - first
    spacing = 1
    for power in range(0, 16):
        for m in (1, 2, 5):
            spacing = m * 10 ** power
            if span / spacing < most:
                break
        else:
            continue
        break
    start = math.ceil(first / spacing) * spacing
    return list(range(start, last + 1, spacing)) or [first]
