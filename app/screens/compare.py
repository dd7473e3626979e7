"""Compare: overlay validation-loss curves of stages from one or several runs (depth vs width),
the final metrics of eval/results.json, and a config diff showing only differing keys."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, SelectionList, Static, TabbedContent, TabPane
from textual.worker import get_current_worker

from app.data.compare import (
    config_diff,
    damaged_results,
    frontier_plots,
    read_experiment,
    results_rows,
    stage_config,
    stage_sections,
)
from app.data.series import SMOOTHING_LEVELS, Series, StageCurves
from app.data.watcher import DrainQueue
from app.file_watch import FilesChanged, WatchedScreen
from app.messages import OpenRun
from app.screens.chart_controls import CHART_BINDINGS, ChartControls
from app.screens.compare_tabs import fill_decide, fill_diff, fill_results
from app.screens.worker_results import while_shown
from app.textual_workarounds import KeepStyles
from app.widgets.compare.frontier import FrontierChart
from app.widgets.compare.pick_list import PickList, split_value
from app.widgets.compare.quality_speed import QualitySpeedChart
from app.widgets.compare.which_student import TEACHER_COLOUR, WhichStudentTable, dimmed, student_colours
from app.widgets.keybar import KeyBar
from app.widgets.loss_chart import PALETTE, Curve, LossChart
from app.widgets.nav import NavBar
from engine.config import ConfigError
from engine.contract import (
    DISTILL,
    PRUNE,
    RunInfo,
    RunLayout,
    UserError,
    is_student_stage,
    kind_or_none,
    student_or_none,
)

POLL_S = 2.0  # how often the watcher looks at the ticked stages' files (live curves)
FILL_DELAY_S = 0.05  # the stage list is filled this long after the first show


class CompareScreen(WatchedScreen, ChartControls, KeepStyles, Screen):
    BINDINGS = [  # first in the key bar: the keys of the first view, "which student?"
        Binding("w", "which", "Curves/which"),
        Binding("ctrl+e", "export", "Export"),
        *CHART_BINDINGS,
        Binding("t", "tab('results')", "Results"),
        Binding("d", "tab('diff')", "Config diff"),
        Binding("v", "tab('speed')", "Quality/speed"),
        Binding("e", "tab('search')", "Search"),
        Binding("f", "tab('frontier')", "Frontier", show=False),
        Binding("a", "select_students", "All students"),
        Binding("o", "open", "Open run"),
        Binding("u", "clear", "Untick all"),  # not esc: a stray esc (leaving a field) lost every tick
    ]

    def __init__(self):
        super().__init__()
        self.axis = "step"
        self.smoothing_i = 0
        self.selected: tuple[str, ...] = ()
        self.curves: dict[str, Series] = {}
        self._reads = DrainQueue()  # changed files (or new ticks) waiting for the loading worker
        self._loader = _Loader()  # the loading worker's own
        self._preselected = False
        self._auto_run: Path | None = None  # the run preselect_run ticked
        self.colours: dict[str, str] = {}  # a ticked stage's colour: its student's (see which_student)

    def compose(self) -> ComposeResult:
        yield NavBar("compare")
        with Vertical(id="compare-which"):  # the first view; `w` switches to the curves and tabs
            yield Static("which student? (the students of the ticked runs)", id="which-title", markup=False)
            yield WhichStudentTable(id="which-table")
        with Horizontal(id="compare-body"):
            yield PickList(id="compare-pick")
            with Vertical(id="compare-main"):
                yield Static("space: tick stages to overlay their validation loss", id="compare-hint")
                yield LossChart(id="compare-chart")
                with TabbedContent(id="compare-tabs"):  # the first pane (Results) opens; see RunDetailScreen
                    with TabPane("Results (eval/results.json)", id="results"):
                        yield DataTable(id="results-table", zebra_stripes=True, cursor_type="row")
                    with TabPane("Config diff", id="diff"):
                        yield DataTable(id="diff-table", zebra_stripes=True, cursor_type="row")
                    with TabPane("Quality vs speed", id="speed"):
                        yield QualitySpeedChart(id="quality-speed")
                    with TabPane("Search", id="search"):
                        yield Static("", id="search-title", markup=False)
                        yield DataTable(id="search-table", zebra_stripes=True, cursor_type="row")
                    with TabPane("Frontier", id="frontier"):  # each search's Pareto frontier
                        yield FrontierChart(id="search-frontier")
        yield KeyBar()

    def on_mount(self) -> None:
        self.app.runs_signal.subscribe(self, self._on_runs)
        # the stage list (hundreds of options with 100 runs) is filled after the first frame: the
        # two together held the event loop for 50-80 ms at the first show (call_after_refresh
        # still ran it in the same event-loop turn as the frame; a timer does not)
        self.set_timer(FILL_DELAY_S, lambda: self._on_runs(self.app.runs))
        self.query_one("#compare-body").display = False
        self.query_one(WhichStudentTable).focus()
        self._watch_files()

    # ---- the stage list ------------------------------------------------------------------------
    def _on_runs(self, runs: list[RunInfo]) -> None:
        picks = self.query_one(PickList)
        before = set(picks.stage_values)
        if picks.update_runs(runs) and self._auto_run is not None:
            # stages of the preselected run that appeared since (a student reaching prune or distill)
            picks.select_values([v for v in _student_values(runs, self._auto_run) if v not in before])
        if not self._preselected and runs:
            self._preselected = True
            newest = next((r for r in runs if any(kind_or_none(s.name) is DISTILL for s in r.stages)), None)
            if newest is not None and not picks.selected:
                self.preselect_run(newest.path)
        self._watch_files()  # a ticked run's search student may have appeared

    def preselect_run(self, path: Path) -> None:
        """Tick a run's pruned and distilled students (the depth-vs-width view)."""
        self._preselected = True
        picks = self.query_one(PickList)
        picks.update_runs(self.app.runs)
        run = next((r for r in self.app.runs if r.path == Path(path)), None)
        if run is not None:
            picks.deselect_all()
            picks.select_values(_student_values(self.app.runs, run.path))
            self._auto_run = run.path  # its students' stages that appear later are ticked too

    def on_selection_list_selected_changed(self, event: SelectionList.SelectedChanged) -> None:
        self.selected = tuple(event.selection_list.selected)
        self.query_one("#compare-hint", Static).update(
            f"{len(self.selected)} stage(s) ticked" if self.selected else "space: tick stages to overlay their validation loss")
        self._watch_files()
        self._load()

    # ---- loading (FilesChanged from the app's watcher; read in a thread worker) -------------------
    def _watch_files(self) -> None:
        """The ticked stages' metrics, their runs' results.json, experiment.toml and search.json files."""
        runs = {split_value(v)[0] for v in self.selected}
        by_path = {r.path: r for r in self.app.runs if r.path in runs}
        files = [RunLayout(path).metrics_file(stage) for path, stage in map(split_value, self.selected)]
        for path in runs:
            layout = RunLayout(path)
            files += [layout.results_file, layout.experiment_file]
            run = by_path.get(path)
            files += [layout.search_file(s.name) for s in (run.stages if run else ()) if _may_search(s.name)]
        self.app.files.watch(self, files, POLL_S)

    def on_files_changed(self, message: FilesChanged) -> None:
        self._load(message.paths)

    def _load(self, paths: set[Path] | frozenset[Path] = frozenset()) -> None:
        """Read again (`paths` changed, or the ticks did) in the loading worker."""
        if self._reads.add(paths):
            self._drain_reads()

    @work(thread=True, group="compare", name="load compare data")
    def _drain_reads(self) -> None:
        """Load until nothing more changed (one such worker at a time: see DrainQueue)."""
        worker = get_current_worker()
        self._reads.drain(lambda paths: self._loader.load(self, paths), lambda: worker.is_cancelled)

    @while_shown
    def _show(self, selected, curves, results, labels, diff, decide=None, colours=None) -> None:
        if selected != self.selected:
            return
        self.curves = curves
        self.colours = colours or {}
        self._draw_chart()
        fill_results(self, results)
        fill_diff(self, labels, diff)
        if decide is not None:
            fill_decide(self, *decide)

    def _draw_chart(self) -> None:
        from textual.color import Color

        axis = self.axis
        items = []
        background = Color.parse(self.app.theme_variables.get("surface", "#1e1e1e")).rgb
        for i, value in enumerate(self.selected):
            s = self.curves.get(value)
            if s is None:
                continue
            colour: str | tuple[int, int, int] = self.colours.get(value, PALETTE[i % len(PALETTE)])
            if kind_or_none(split_value(value)[1]) is PRUNE and isinstance(colour, str):
                colour = dimmed(colour, background)  # the student's hue, dimmed: its pruned-only reference
            items.append(Curve(_label(value), s.xs(axis), s.loss, colour, smooth=len(s) > 3, points=len(s) <= 2))
        chart = self.query_one(LossChart)
        chart.empty_text = "tick stages on the left (space) to overlay their validation loss"
        chart.show(items, xlabel=f"{axis}   (val loss; smoothing {SMOOTHING_LEVELS[self.smoothing_i]})",
                   **self.chart_options())

    # ---- actions -------------------------------------------------------------------------------
    def action_tab(self, tab: str) -> None:
        self._show_which(False)
        self.query_one("#compare-tabs", TabbedContent).active = tab

    def action_export(self) -> None:
        """The highlighted student of the "which student?" table, as a Hugging Face folder."""
        from app.screens.actions import request_export

        model = self.query_one(WhichStudentTable).highlighted_model()
        if model is None or model[2] == "teacher":
            self.notify("highlight a student in the which student? table (w shows it), then ctrl+e",
                        severity="warning")
            return
        run, student, _ = model
        path = next((r.path for r in self.app.runs if r.name == run), self.app.runs_dir / run)
        request_export(self.app, path, student)

    def action_which(self) -> None:
        self._show_which(not self.query_one("#compare-which").display)

    def _show_which(self, which: bool) -> None:
        """The "which student?" table over the whole width, or the stage list, chart and tabs."""
        self.query_one("#compare-which").display = which
        self.query_one("#compare-body").display = not which
        (self.query_one(WhichStudentTable) if which else self.query_one(PickList)).focus()

    def action_select_students(self) -> None:
        picks = self.query_one(PickList)
        picks.select_values([v for v in picks.stage_values if "::prune-" in v or "::distill-" in v])

    def action_clear(self) -> None:
        self.query_one(PickList).deselect_all()

    def action_open(self) -> None:
        picks = self.query_one(PickList)
        if picks.highlighted is not None and picks.stage_values:
            path, stage = split_value(picks.stage_values[picks.highlighted])
            self.post_message(OpenRun(path, stage))


class _Loader:
    """What the loading worker keeps between loads: each ticked stage's incremental curve reader, and
    what was last shown and warned about."""

    def __init__(self) -> None:
        self.cursors: dict[str, StageCurves] = {}
        self.shown: tuple[str, ...] | None = None
        self.warned: set[str] = set()  # damaged results.json files already said

    def load(self, screen: CompareScreen, paths: set[Path]) -> bool:
        """Read what `paths` (and new ticks) changed and hand it to the screen; False when the app is closing."""
        selected = screen.selected
        ticks_moved = selected != self.shown
        changed = ticks_moved
        for value in selected:
            path, stage = split_value(value)
            metrics = RunLayout(path).metrics_file(stage)
            if value not in self.cursors:
                self.cursors[value] = StageCurves(metrics)
                changed = True
            if metrics in paths or ticks_moved:
                changed = self.cursors[value].update() or changed
        # the engine's readers (experiment, configs, results) only when the ticks or those files moved
        others_moved = any(p.name != RunLayout.METRICS for p in paths)
        if not (changed or others_moved):
            return True
        app = screen.app
        curves = {v: self.cursors[v].val.snapshot() for v in selected}
        runs = sorted({split_value(v)[0] for v in selected})
        results = [row for r in runs for row in results_rows(r)]
        for line in filter(None, (damaged_results(r) for r in runs)):
            if line not in self.warned:  # once per run and file state
                self.warned.add(line)
                app.call_from_thread(screen.notify, line, severity="warning", timeout=10)
        raws = {r: read_experiment(r) for r in runs}
        colours = stage_colours(selected, raws)
        configs = {_label(v): stage_config(raws[split_value(v)[0]], split_value(v)[1]) for v in selected}
        sections = {_label(v): stage_sections(split_value(v)[1]) for v in selected}
        diff = config_diff(configs, sections) if len(configs) > 1 else []
        decide = decide_data(runs) if ticks_moved or others_moved else None
        try:
            app.call_from_thread(screen._show, selected, curves, results, list(configs), diff, decide, colours)
        except RuntimeError:
            return False
        self.shown = selected
        return True


def decide_data(runs: list[Path]) -> tuple[str, list, str, list, list, dict[str, str], list]:
    """What the Quality-vs-speed and Search tabs show, read by the engine's own `compare` readers
    (imported here, in the worker thread: they are not needed for the first frame):
    (y label, [(label, method, decode tokens/s, quality)], x label, [(title, rows, name)], the model
    rows (engine.contract.ModelRow), each point's colour: its student's, the search students'
    frontiers (app.data.compare.FrontierPlot))."""
    from app.data.compare import search_heading
    from engine.contract import decide_columns, quality_speed_points, read_model_rows, row_cells
    from engine.contract.search_table import search_docs, search_rows

    rows = []
    for r in runs:
        try:
            # a model results.json does not size (eval has not run): from its config.json, as `compare` does
            rows += read_model_rows(r)
        except (ConfigError, UserError):  # not (yet) a readable run directory: nothing to plot from it
            continue
    ylabel, points = quality_speed_points(rows)
    colours = student_colours((r.run, r.label) for r in rows if r.method != "teacher")
    many = len({r.run for r in rows}) > 1
    point_colours = {row_cells(r, many)[0]: colours.get((r.run, r.label), TEACHER_COLOUR) for r in rows}
    # a model timed while other work competed for the CPU: its point says so ("*"), and the axis why
    loaded = {row_cells(r, many)[0] for r in rows if r.under_load}
    points = [(f"{label}*" if label in loaded else label, *rest) for label, *rest in points]
    point_colours.update({f"{label}*": point_colours[label] for label in loaded if label in point_colours})
    batch = decide_columns(rows)[1][0] if points else "1"
    searches = []
    try:
        docs = search_docs(runs)
    except (ConfigError, UserError):  # as above; an engine bug still shows (not an empty tab)
        docs = []
    for name, doc in docs:
        try:
            searches.append((search_heading(name, doc), search_rows(doc), name))  # + its audit line
        except (KeyError, TypeError, ValueError):
            continue
    note = QualitySpeedChart.axis_note(runs, bool(loaded & {p[0].rstrip("*") for p in points}))
    return (ylabel, points, f"decode tokens/s at batch {batch} (right is faster{note})", searches, rows,
            point_colours, frontier_plots(runs))


def stage_colours(selected: tuple[str, ...], raws: dict[Path, dict]) -> dict[str, str]:
    """Each ticked stage's colour: its student's, as in the "which student?" table (students in
    their runs' [[prune]] order, runs sorted); other stages (fine-tune) the teacher's gray."""
    names = {path: str(raw.get("name") or path.name) for path, raw in raws.items()}
    colours = student_colours((names[path], str(p.get("name"))) for path in sorted(raws)
                              for p in raws[path].get("prune") or [] if isinstance(p, dict))
    out = {}
    for value in selected:
        path, stage = split_value(value)
        student = student_or_none(stage)
        out[value] = colours.get((names.get(path, path.name), student or ""), TEACHER_COLOUR)
    return out


def _label(value: str) -> str:
    path, stage = split_value(value)
    return f"{path.name}/{stage}"


def _may_search(stage: str) -> bool:
    kind = kind_or_none(stage)
    return kind is not None and kind.may_search


def _student_values(runs: list[RunInfo], path: Path) -> list[str]:
    """The pick-list values of a run's students' stages (prune-*, distill-*)."""
    run = next((r for r in runs if r.path == path), None)
    return [f"{path}::{s.name}" for s in (run.stages if run else ()) if is_student_stage(s.name)]
