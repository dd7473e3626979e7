"""Quality vs speed in the terminal (textual-plotext): one point per model of eval/results.json,
decode tokens/s at the smallest batch against the mean task score (or validation loss), teacher,
depth, width and search students told apart by marker and colour. The points are those of the engine's
own `compare` PNG (engine.contract.quality_speed_points).

Each label is placed in the plot's cells beside its point, never over a marker (point_labels); the
notes on the speed figures (rounds, spread, load, a warning when runs were timed under different
loads) are lines above the plot."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.text import Text
from textual.geometry import Size
from textual_plotext import PlotextPlot

from app.widgets.compare import speed_note
from app.widgets.compare.point_labels import from_cell, place_labels, to_cell

# method -> (plotext marker, colour), readable on the light and the dark theme
STYLE = {"teacher": ("★", "gray"), "depth": ("●", "blue"), "width": ("■", "orange"), "search": ("◆", "green")}
OTHER = ("◆", "magenta")
WARN = "⚠"  # notes holding it are drawn in the warning colour


class QualitySpeedChart(PlotextPlot):
    _figure_rows: int | None = None  # while the figure is built: its height, below the notes

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.points: list[tuple[str, str, float, float]] = []  # (label, method, x, y)
        self.ylabel = ""
        self.xlabel = ""
        self.notes = ""  # how the speeds were measured, load marks and warnings
        self._axis = ""  # the x label less its notes
        self.colours: dict[str, str] = {}
        self.empty_text = "no decode speed in eval/results.json of the ticked runs (eval with speed = true)"
        self._version = 0
        self._built: tuple[tuple, Text] | None = None

    def show(self, ylabel: str, points: list[tuple[str, str, float, float]], xlabel: str,
             colours: dict[str, str] | None = None) -> None:
        """`colours`: a point's colour by its label (its student's, as in Compare's other views);
        the marker still tells the method. Without them, one colour per method, with a legend.
        The clauses of `xlabel` after its first "; " are notes, drawn on lines above the plot."""
        self.points, self.ylabel, self.xlabel = points, ylabel, xlabel
        self._axis, self.notes = split_notes(xlabel)
        self.colours = colours or {}
        self._version += 1
        self.refresh()

    @staticmethod
    def axis_note(run_dirs: list[Path], loaded: bool) -> str:
        """The notes its x label ends with, for the runs `run_dirs` (read in Compare's loading
        worker): see speed_note.axis_note."""
        return speed_note.axis_note(run_dirs, loaded)

    def on_mount(self) -> None:
        super().on_mount()
        # the labels' background is the theme's: drawn again in the new one
        self.app.theme_changed_signal.subscribe(self, lambda _t: self.refresh())

    def render(self):
        if not self.points:
            return Text(self.empty_text, justify="center", style="dim")
        key = (self._version, super().size, self.app.theme, self.theme)
        if self._built is None or self._built[0] != key:
            width, height = super().size
            warn = f"bold {self.app.theme_variables.get('warning', 'yellow')}"  # readable on either theme
            lines = note_lines(self.notes, width, 1 if height < 14 else 3, warn) if height >= 6 else []
            self._figure_rows = max(1, height - len(lines))
            try:
                self._draw(None)
                super().render()  # built once without labels: where plotext puts the canvas
                matrix = self.plt._active.monitor.matrix
                canvas = (len(matrix.Cols_canvas), len(matrix.Rows_canvas))
                self._draw(canvas)
                figure = super().render()
            finally:
                self._figure_rows = None
            self._built = (key, Text("\n", no_wrap=True, overflow="crop").join([*lines, figure]))
        return self._built[1]

    @property
    def size(self) -> Size:
        """PlotextPlot.render sizes the figure to this: less the notes' rows while it is built."""
        size = super().size
        return size if self._figure_rows is None else Size(size.width, self._figure_rows)

    def _draw(self, canvas: tuple[int, int] | None) -> None:
        """The figure; with the canvas's size (columns, rows), the point labels too."""
        points, colours = self.points, self.colours
        plt = self.plt
        plt.clear_figure()
        for method in dict.fromkeys(m for _, m, _, _ in points):
            marker, color = STYLE.get(method, OTHER)
            for label, _m, x, y in [p for p in points if p[1] == method]:
                plt.scatter([x], [y], marker=marker, color=colours.get(label, color),
                            label=None if colours else method or "?")
        xs, ys = [p[2] for p in points], [p[3] for p in points]
        xspan = (max(xs) - min(xs)) or abs(xs[0]) or 1.0
        yspan = (max(ys) - min(ys)) or abs(ys[0]) or 1.0
        # room around the points, and to their right for the labels
        xlim = (max(0.0, min(xs) - 0.1 * xspan), max(xs) + 0.45 * xspan)  # no negative speeds
        ylim = (min(ys) - 0.15 * yspan, max(ys) + 0.15 * yspan)
        plt.xlim(*xlim)
        plt.ylim(*ylim)
        if canvas is not None:
            cols, rows = canvas
            cells = [(to_cell(x, xlim, cols), to_cell(y, ylim, rows)) for _l, _m, x, y in points]
            for (label, method, _x, _y), spot in zip(points, place_labels(cells, [p[0] for p in points], cols, rows),
                                                     strict=True):
                if spot is not None:
                    (col, row), text = spot
                    plt.text(text, from_cell(col, xlim, cols), from_cell(row, ylim, rows),
                             color=colours.get(label, STYLE.get(method, OTHER)[1]), background=self._canvas(),
                             alignment="left")
        # plotext drops the x label when it and the y label do not fit on their one row: the x
        # axis (with its unit) went unlabelled at 80 columns. The y axis is named in the title.
        plt.xlabel(self._axis)
        plt.title(f"quality vs speed   (y: {self.ylabel})")

    def _canvas(self) -> tuple[int, int, int] | str:
        """The plot's own background (textual-plotext paints it in the theme's surface colour): plotext
        drew the labels on white boxes, glaring in the dark theme."""
        from textual.color import Color

        try:
            return Color.parse(self.app.theme_variables["surface"]).rgb
        except Exception:  # noqa: BLE001 - no app or theme yet: the terminal's own
            return "default"


def split_notes(xlabel: str) -> tuple[str, str]:
    """("decode tokens/s (right is faster)", "median of 12 rounds; ⚠ ...") of "decode tokens/s
    (right is faster; median of 12 rounds; ⚠ ...)": the x label less its notes (which at 80 columns
    made it too long to be drawn at all), and those notes."""
    head, sep, tail = xlabel.partition("; ")
    if not sep:
        return xlabel, ""
    closes = tail.endswith(")") and head.count("(") > head.count(")")
    return head + (")" if closes else ""), tail[:-1] if closes else tail


def note_lines(notes: str, width: int, most: int, warn: str = "bold yellow") -> list[Text]:
    """The notes wrapped to `width`, at most `most` lines (the last cut with "…"); a warning (WARN)
    first (a short chart has one line), in the `warn` style, the rest dim."""
    if not notes or width < 1:
        return []
    notes = "; ".join(sorted(notes.split("; "), key=lambda clause: WARN not in clause))
    text = Text(notes, style="dim")
    at = notes.find(WARN)
    if at >= 0:
        text.stylize(warn, at)
    lines = list(text.wrap(_CONSOLE, width))
    if len(lines) > most:
        lines = lines[:most]
        lines[-1].truncate(width - 1)
        lines[-1].append("…")
    return lines


_CONSOLE = Console(width=200)
