"""A search's Pareto frontier in the terminal (textual-plotext): quality (the search's score) against
parameters, the frontier drawn as a line over every scored candidate (dots), the chosen one ★, and
the run's hand-made depth and width students marked beside it (their loss right after pruning) when
the search scored by that loss ("hand-made n/a" under the plot when it did not). The points come from app.data.compare.frontier_plots (search.json)."""

from __future__ import annotations

from rich.text import Text
from textual_plotext import PlotextPlot

from app.data.compare import FrontierPlot
from app.widgets.compare.quality_speed import OTHER, STYLE

LINE_COLOURS = ("green", "cyan", "magenta", "blue")  # one per search student
CHOSEN = "★"
NOT_MARKED = "hand-made n/a"  # the hand-made students' loss is not the search's measure (FrontierPlot.note)
UNITS = ((1e9, "B"), (1e6, "M"), (1e3, "K"), (1.0, ""))


def params_unit(top: float) -> tuple[float, str]:
    """The scale the x axis counts parameters in: plotext's ticks for 81500000 read 8.15e7."""
    return next((div, name) for div, name in UNITS if top >= div or div == 1.0)


class FrontierChart(PlotextPlot):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.plots: list[FrontierPlot] = []
        self.empty_text = 'no search student (method = "search") with scored candidates in the ticked runs'

    def show(self, plots: list[FrontierPlot]) -> None:
        self.plots = plots
        plt = self.plt
        plt.clear_figure()
        if plots:
            xs = [x for p in plots for x, _ in p.scored] + [x for p in plots for _, _, x, _ in p.hand_made]
            ys = [y for p in plots for _, y in p.scored] + [y for p in plots for _, _, _, y in p.hand_made]
            div, unit = params_unit(max(xs))
            xspan = (max(xs) - min(xs)) / div or abs(xs[0]) / div or 1.0
            yspan = (max(ys) - min(ys)) or abs(ys[0]) or 1.0
            lo, hi = min(xs) / div - 0.05 * xspan, max(xs) / div + 0.35 * xspan  # room for the labels
            dx = 2 * (hi - lo) / max(self.size.width - 6, 20)  # a label starts two cells right of its point
            for k, p in enumerate(plots):
                self._draw(p, div, LINE_COLOURS[k % len(LINE_COLOURS)], dx)
            plt.xlim(lo, hi)
            plt.ylim(min(ys) - 0.15 * yspan, max(ys) + 0.15 * yspan)
            # short: plotext drops a title or an x label wider than the plot (49 columns beside the stage list)
            p = plots[0]
            na = f" · {NOT_MARKED}" if any(q.note for q in plots) else ""
            plt.xlabel(f"params{f' ({unit})' if unit else ''} · {CHOSEN} chosen{na}")
            plt.title(f"frontier: {p.score} vs params ({'higher' if p.higher_is_better else 'lower'} is better)")
        self.refresh()

    def _draw(self, p: FrontierPlot, div: float, colour: str, dx: float) -> None:
        plt = self.plt
        off = [pt for pt in p.scored if pt not in p.frontier]
        if off:
            plt.scatter([x / div for x, _ in off], [y for _, y in off], marker="·", color="gray")
        fx, fy = [x / div for x, _ in p.frontier], [y for _, y in p.frontier]
        plt.plot(fx, fy, marker="braille", color=colour)  # the line between the points: thin
        plt.scatter(fx, fy, marker=STYLE["search"][0], color=colour)
        if p.chosen is not None:
            x, y = p.chosen
            plt.scatter([x / div], [y], marker=CHOSEN, color=colour)
            label = p.name if p.chosen_on_frontier else f"{p.name} (off the frontier)"
            plt.text(label, x / div + dx, y, color=colour, background=self._canvas(), alignment="left")
        for name, method, x, y in p.hand_made:
            marker, c = STYLE.get(method, OTHER)
            plt.scatter([x / div], [y], marker=marker, color=c)
            plt.text(name, x / div + dx, y, color=c, background=self._canvas(), alignment="left")

    def on_mount(self) -> None:
        super().on_mount()
        self.app.theme_changed_signal.subscribe(self, lambda _t: self.show(self.plots))  # labels' background

    def on_resize(self) -> None:
        if self.plots:  # the labels' offset is in cells
            self.show(self.plots)

    def _canvas(self) -> tuple[int, int, int] | str:
        from textual.color import Color

        try:
            return Color.parse(self.app.theme_variables["surface"]).rgb
        except Exception:  # noqa: BLE001 - no app or theme yet: the terminal's own
            return "default"

    def render(self):
        if not self.plots:
            return Text(self.empty_text, justify="center", style="dim")
        return super().render()
