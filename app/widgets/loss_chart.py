"""Loss curves in the terminal (textual-plotext), shared by Run detail and Compare."""

from __future__ import annotations

import math
from dataclasses import dataclass

from plotext._utility import get_color_code
from rich.color import Color
from rich.style import Style
from rich.text import Text
from textual.geometry import Size
from textual_plotext import PlotextPlot

from app.data.series import downsample, ema

# plotext colour names readable on both the light and the dark theme
PALETTE = ("blue", "red", "green", "magenta", "cyan", "orange", "gray")
MIN_FIGURE_ROWS = 5  # the key gives up rows (folding its last entries into "+N") to keep these


@dataclass
class Curve:
    label: str
    xs: list[float]
    ys: list[float]
    color: str = "blue"
    smooth: bool = True  # EMA applies (val curves with few points are drawn as they are)
    points: bool = False  # a scatter (e.g. the single "loss after pruning" point)


class LossChart(PlotextPlot):
    """`show(curves, ...)` replaces what is drawn; points are thinned to what the width can show.

    Which curve is which is told by a coloured key on the rows above the figure, not by plotext's
    legend: that one is drawn inside the plot area and hid half the curves at 80 columns."""

    _figure_rows: int | None = None  # while the figure is built: its height, below the key

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.curves: list[Curve] = []
        self.xlabel = "step"
        self.smoothing = 0.0
        self.log_y = False
        self.zoom = 1.0  # the part of the x range shown, the last one
        self.x_span: tuple[float, float] | None = None  # a fixed x range (shared with another chart)
        self.title = ""
        self.empty_text = "no metrics yet"
        self.held = False  # draw nothing until release() (a screen's first frames, see Run detail)
        self._version = 0  # bumped by every _draw: what the built figure is for
        self._drawn_width: int | None = None
        self._built: tuple[tuple, Text] | None = None

    def show(self, curves: list[Curve], xlabel: str = "step", smoothing: float = 0.0, log_y: bool = False,
             zoom: float = 1.0, title: str = "", x_span: tuple[float, float] | None = None) -> None:
        """`log_y`: a log y axis (the x label then says "log y"); `zoom`: show only the last part of
        the x range (0.2: the last fifth); `x_span`: the x range to draw (before the zoom), so that
        two charts stacked share one axis; an x axis labelled "step..." gets whole-number ticks."""
        self.curves, self.xlabel, self.smoothing = curves, xlabel, smoothing
        self.log_y, self.zoom, self.title, self.x_span = log_y, zoom, title, x_span
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
            width, height = self.size
            lines = key_lines(self.curves, width, max(1, height - MIN_FIGURE_ROWS))
            figure = self._figure(max(1, height - len(lines)))
            self._built = (key, Text("\n", no_wrap=True, overflow="crop").join([*lines, figure]))
        return self._built[1]

    @property
    def size(self) -> Size:
        """PlotextPlot.render sizes the figure to this: the widget's size less the key's rows, while
        _figure builds it."""
        size = super().size
        return size if self._figure_rows is None else Size(size.width, self._figure_rows)

    def _figure(self, rows: int) -> Text:
        self._figure_rows = rows
        try:
            return super().render()
        finally:
            self._figure_rows = None

    def _draw(self) -> None:
        self._version += 1
        self._drawn_width = self.size.width
        if not any(c.ys for c in self.curves):  # render() shows the empty text, not the figure
            self.refresh()
            return
        plt = self.plt
        plt.clear_figure()
        max_points = max(2 * (self.size.width or 80), 64)  # braille: 2 dots per cell
        curves = zoomed(self.curves, self.zoom, self.x_span)
        lines = [c for c in curves if c.ys and not c.points and len(c.ys) > 1]
        xs_all = [x for c in curves for x in (c.xs[:1] + c.xs[-1:]) if c.ys]
        x_range = (min(xs_all), max(xs_all)) if lines else None
        span = self.x_span
        if span is not None:  # the shared range, zoomed like the curves; the ticks span it
            span = (span[1] - (span[1] - span[0]) * min(1.0, self.zoom), span[1])
            xs_all = [*xs_all, *span]
        for c in curves:
            if not c.ys:
                continue
            # no label: plotext would draw a legend over the curves (the key above tells them apart)
            if (c.points or len(c.ys) == 1) and x_range is not None:
                # a single value (loss right after pruning): a reference line across the chart,
                # so each distilled curve can be read against its pruned-only starting point
                plt.plot(list(x_range), [c.ys[-1]] * 2, color=c.color, marker="dot")
            elif c.points or len(c.ys) == 1:
                plt.scatter(c.xs, c.ys, color=c.color, marker="dot")
            else:
                ys = ema(c.ys, self.smoothing) if c.smooth else c.ys
                xs, ys = downsample(c.xs, ys, max_points)
                plt.plot(xs, ys, color=c.color, marker="braille")
        log = self.log_y and all(y > 0 for c in curves for y in c.ys)
        plt.xlabel(self.xlabel + ("   · log y" if log else ""))  # a log axis says so: its ticks alone did not
        if self.title:
            plt.title(self.title)
        if span is not None and span[1] > span[0]:
            plt.xlim(*span)
        if log:
            plt.yscale("log")
        if self.xlabel.startswith("step") and xs_all:
            ticks = int_ticks(min(xs_all), max(xs_all))
            plt.xticks(ticks, [str(t) for t in ticks])
        self.refresh()


def key_lines(curves: list[Curve], width: int, max_rows: int) -> list[Text]:
    """The chart's key: "━ label" per curve in its colour ("• label" for a point), packed into lines
    of `width`; a label prefix ending in "/" that all share (the run, in Compare) is said once, in
    front ("run-b:"). Entries past `max_rows` lines become "+N"."""
    shown = [c for c in curves if c.ys]
    if not shown or width < 1:
        return []
    prefix = _shared_prefix([c.label for c in shown])
    entries = [_entry(c, prefix) for c in shown]
    lines: list[Text] = [Text(prefix.rstrip("/") + ":", style="dim")] if prefix else [Text()]
    for i, entry in enumerate(entries):
        gap = 2 if lines[-1].plain else 0
        if lines[-1].cell_len + gap + entry.cell_len > width and lines[-1].plain:
            if len(lines) == max_rows:
                _fold(lines[-1], len(entries) - i, width)
                break
            lines.append(Text())
            gap = 0
        lines[-1].append(" " * gap)
        lines[-1].append_text(entry)
        lines[-1].truncate(width, overflow="ellipsis")
    return lines


def _entry(curve: Curve, prefix: str) -> Text:
    mark = "•" if curve.points or len(curve.ys) == 1 else "━"
    return Text(f"{mark} {curve.label[len(prefix):]}", style=_style(curve.color))


def _shared_prefix(labels: list[str]) -> str:
    """"run-b/" of "run-b/prune-depth" and "run-b/distill-depth"; "" for one label or none shared."""
    first = labels[0].rpartition("/")[0] + "/" if "/" in labels[0] else ""
    if len(labels) < 2 or not first or not all(label.startswith(first) for label in labels):
        return ""
    return first


def _fold(line: Text, hidden: int, width: int) -> None:
    """End a full key line with "+N" (N entries not shown)."""
    more = f"  +{hidden}"
    line.truncate(max(0, width - len(more)), overflow="ellipsis")
    line.append(more, style="dim")


def _style(color: str | tuple[int, int, int]) -> Style:
    """The colour plotext draws `color` in (an ANSI number, or an RGB triple), for the key to match
    the curve."""
    if isinstance(color, tuple):
        return Style(color=Color.from_rgb(*color))
    code = get_color_code(color)
    return Style(color=Color.from_ansi(code) if isinstance(code, int) else color)


def zoomed(curves: list[Curve], zoom: float, span: tuple[float, float] | None = None) -> list[Curve]:
    """The curves' points in the last `zoom` part of their common x range, or of `span` (all of
    them at 1.0)."""
    xs = [x for c in curves for x in c.xs]
    if zoom >= 1.0 or not xs:
        return curves
    lo, hi = span if span is not None else (min(xs), max(xs))
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
