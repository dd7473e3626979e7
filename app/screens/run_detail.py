"""Run detail: stage graph, live loss chart, log tail, resolved config, status; cancel/resume."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, ScrollableContainer, Vertical, VerticalScroll
from textual.markup import escape
from textual.screen import Screen
from textual.widgets import OptionList, Static, TabbedContent, TabPane
from textual.worker import get_current_worker

from app.data import fmt
from app.data.series import SMOOTHING_LEVELS, Series, StageCurves
from app.data.watcher import DrainQueue
from app.file_watch import FilesChanged, WatchedScreen
from app.messages import EditExperiment
from app.screens.actions import request_cancel, request_resume
from app.screens.chart_controls import CHART_BINDINGS, ChartControls
from app.screens.worker_results import while_shown
from app.textual_workarounds import KeepStyles
from app.widgets.detail.log_view import LogView
from app.widgets.detail.search_table import SearchTable
from app.widgets.detail.stage_list import StageList
from app.widgets.keybar import KeyBar
from app.widgets.loss_chart import Curve, LossChart
from app.widgets.nav import NavBar
from app.widgets.run_progress import run_progress_text
from app.widgets.static_text import set_text
from app.widgets.style import (
    error_markup,
    run_state_markup,
    state_style,
    warned_stages_markup,
    warning_markup,
)
from engine.contract import RunInfo, RunLayout, StageInfo
from engine.contract.tail import LogTail

POLL_S = 0.25  # how often the watcher looks at the shown stage's log and metrics
CHART_HZ = 2.0
# The tabs (chart, log, config, status) are laid out and drawn this long after the screen's first
# frame, and the chart (a plotext figure, 10-17 ms) this long after the tabs: the whole screen in one
# frame took 30-66 ms on a small CPU, the tabs and the chart about half of it.
TABS_AFTER_S = 0.03


class RunDetailScreen(WatchedScreen, ChartControls, KeepStyles, Screen):
    BINDINGS = [
        Binding("escape,backspace", "back", "Back"),
        Binding("c", "cancel", "Cancel run"),
        Binding("r", "resume", "Resume"),
        Binding("p", "tab('chart')", "Chart"),
        Binding("l", "tab('log')", "Log"),
        Binding("o", "tab('config')", "Config"),
        Binding("i", "tab('status')", "Status"),
        *CHART_BINDINGS,
        Binding("f", "follow", "Follow stage"),
        Binding("e", "edit", "Edit copy"),
        Binding("ctrl+e", "export", "Export student"),
    ]

    def __init__(self, path: Path, stage: str | None = None):
        super().__init__()
        self.path = Path(path)
        self.run_layout = RunLayout(self.path)
        self.stage_name: str | None = stage
        self.follow = stage is None  # show whichever stage is running until the user picks one
        self.run: RunInfo | None = None
        self.axis = "step"
        self.smoothing_i = 1
        self.series: tuple[Series, Series] = (Series(), Series())
        self._shown: tuple[int, str | None] = (0, stage)  # (generation, stage) the files are read for
        self._reads = DrainQueue()  # changed files waiting for the reader worker
        self._files: _StageFiles | None = None  # the reader worker's own
        self._last_draw = 0.0
        self._chart_timer = None

    def compose(self) -> ComposeResult:
        yield NavBar("runs")
        yield Static("", id="detail-title")
        with Horizontal(id="detail-body"):
            yield StageList(id="stage-list")
            with Vertical(id="detail-main"):
                yield Static("", id="stage-summary")
                # no `initial`: the first pane (Chart) opens anyway, and an explicit one made Tabs validate
                # it on mount and raise "No Tab with id" when a screen mounted while the app was busy
                with TabbedContent(id="detail-tabs"):
                    with TabPane("Chart", id="chart"):
                        # train and validation each on their own axes: a KD loss (~0.05) and a val
                        # loss (~8) on one y axis left the KD curve a flat line at the bottom
                        yield LossChart(id="loss-chart")
                        yield LossChart(id="val-chart")
                    with TabPane("Log", id="log"):
                        yield LogView(id="log-view")
                    with TabPane("Config", id="config"):
                        with VerticalScroll():
                            yield Static("", id="config-text", markup=False)
                    with TabPane("Status", id="status"):
                        with ScrollableContainer():  # sideways too: a search table is wider than 80 columns
                            yield Static("", id="status-text", markup=False)
                            yield SearchTable(id="search-table")  # a search student's candidates
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#detail-tabs").display = False  # shown just after the first frame,
        for chart in self.query(LossChart):
            chart.held = True  # and the charts in the frame after that
        self.set_timer(TABS_AFTER_S, self._show_tabs)
        self.app.runs_signal.subscribe(self, self._on_runs)
        self.app.theme_changed_signal.subscribe(self, lambda _t: self._on_runs(self.app.runs, restyle=True))
        self._on_runs(self.app.runs)
        self.query_one(StageList).focus()
        self._watch_files()

    def _show_tabs(self) -> None:
        self.query_one("#detail-tabs").display = True
        self.set_timer(TABS_AFTER_S, lambda: [chart.release() for chart in self.query(LossChart)])

    # ---- run snapshot (from the app's scanner, once a second) -----------------------------
    def _on_runs(self, runs: list[RunInfo], restyle: bool = False) -> None:
        run = next((r for r in runs if r.path == self.path), None)
        title = self.query_one("#detail-title", Static)
        if run is None:
            set_text(title, f"[b]{escape(self.path.name)}[/b]  (not found under {escape(str(self.app.runs_dir))}/ yet)",
                     restyle)
            return
        self.run = run
        state = run_state_markup(self.app, run)
        err = f"  {error_markup(run.state, run.error)}" if run.error else ""
        progress = escape(run_progress_text(run, self.app.clock()))
        warn = warned_stages_markup(run)
        set_text(title, f"[b]{escape(run.name)}[/b]  {state}  {progress}  {escape(str(run.path))}{err}{warn}", restyle)
        stages = self.query_one(StageList)
        stages.show_run(run, restyle)
        cur = run.current
        if self.stage_name is None or (self.follow and cur is not None and cur.name != self.stage_name):
            self._select(cur.name if cur else None)
        elif stages.highlighted is None and self.stage_name:
            stages.select_stage(self.stage_name)  # opened on a given stage (from Compare, GPUs)
        self._show_summary(restyle)

    def _show_summary(self, restyle: bool = False) -> None:
        s = self.run.stage(self.stage_name) if self.run and self.stage_name else None
        set_text(self.query_one("#stage-summary", Static), self._summary(s) if s else "", restyle)

    def _summary(self, s: StageInfo) -> str:
        st = f"[{state_style(self.app, s.state)}]{fmt.STATE_GLYPH.get(s.state, '?')} {s.name} {s.state}[/]"
        parts = [st]
        if s.total_steps:
            parts.append(f"step {s.step}/{s.total_steps} {fmt.bar(s.fraction, 8)}")
        elif s.step:
            parts.append(f"step {s.step}")
        if s.eta_s is not None:
            parts.append(f"ETA {fmt.duration(s.eta_s)}")
        parts.append(f"{train_loss_label(s.name)} {fmt.loss(s.train_loss)}  val {fmt.loss(s.val_loss)}")
        if s.tokens_per_s:
            parts.append(f"{fmt.si(s.tokens_per_s)} tok/s")
        if s.gpus:
            parts.append(f"GPUs {fmt.gpus(s.gpus)}")
        line = "  ".join(parts)
        if s.note:  # "cancelling: saving checkpoint at step N"
            line += f"\n[$text-warning]{escape(s.note)}[/]"
        if s.error:
            line += f"\n{error_markup(s.state, s.error)}"
        if s.warning:
            line += f"\n{warning_markup(None, s.warning)}"
        if self.query_one(SearchTable).doc is not None:
            line += "  [dim]search table: Status (i)[/]"
        return line

    # ---- stage selection ---------------------------------------------------------------------
    def _select(self, name: str | None) -> None:
        if name == self.stage_name and name is not None:
            return
        self.stage_name = name
        self._shown = (self._shown[0] + 1, name)
        self.series = (Series(), Series())
        self.query_one(LogView).reset()
        self.query_one(SearchTable).show(None, "")  # the new stage's comes with its files
        self.query_one("#status-text", Static).update(_status_text(""))
        self._draw_chart()
        if name:
            self.query_one(StageList).select_stage(name)
        self._show_summary()
        self._watch_files()

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        name = event.option.id
        if name != self.query_one(StageList).highlighted_stage:
            return  # stale: the highlight moved again before this message arrived
        if name and name != self.stage_name:
            self.follow = False
            self._select(name)

    # ---- files of the shown stage (FilesChanged from the app's watcher; read in a thread worker) ----
    def _stage_files(self, stage: str | None) -> list[Path]:
        if not stage:
            return []
        layout = self.run_layout
        return [layout.log_file(stage), layout.metrics_file(stage), layout.stage_status_file(stage),
                *([layout.search_file(stage)] if _may_search(stage) else [])]

    def _watch_files(self) -> None:
        """Subscribe to the run's config and the selected stage's files (existing ones come as news)."""
        self.app.files.watch(self, [self.run_layout.experiment_file, *self._stage_files(self.stage_name)], POLL_S)

    def on_files_changed(self, message: FilesChanged) -> None:
        if self._reads.add(message.paths):
            self._drain_reads()

    @work(thread=True, group="detail", name="read stage files")
    def _drain_reads(self) -> None:
        """Read what changed until nothing more did (one such worker at a time: see DrainQueue)."""
        worker = get_current_worker()
        self._reads.drain(self._read_files, lambda: worker.is_cancelled)

    def _read_files(self, paths: set[Path]) -> bool:
        """Read `paths` and hand the news to _apply; False when the app is closing."""
        generation, stage = self._shown  # one read of the pair the event loop sets
        files = self._files
        if files is None or files.generation != generation:  # another stage: its readers start over
            files = self._files = _StageFiles(generation, stage, self.run_layout)
            paths = paths | set(self._stage_files(stage))
        layout = self.run_layout
        lines = files.tail.read() if files.tail and layout.log_file(stage) in paths else []
        series = None
        if files.curves and layout.metrics_file(stage) in paths and files.curves.update():
            series = (files.curves.train.snapshot(), files.curves.val.snapshot())

        def news(path: Path) -> str | None:
            return _text(path) if path in paths else None

        config = news(layout.experiment_file)
        status = news(layout.stage_status_file(stage)) if stage else None
        search = news(layout.search_file(stage)) if stage and _may_search(stage) else None
        if lines or series or config is not None or status is not None or search is not None:
            try:
                self.app.call_from_thread(self._apply, generation, lines, series, config, status, search)
            except RuntimeError:
                return False
        return True

    @while_shown
    def _apply(self, generation: int, lines: list[str], series: tuple[Series, Series] | None,
               config: str | None, status: str | None, search: str | None = None) -> None:
        if config is not None:
            self.query_one("#config-text", Static).update(config or "(no experiment.toml)")
        if generation != self._shown[0]:
            return  # the user picked another stage meanwhile: its own reads follow
        if lines:
            self.query_one(LogView).append(lines)
        if series is not None:
            self.series = series
            self._draw_chart_soon()
        if status is not None:
            self.query_one("#status-text", Static).update(_status_text(status))
        if search is not None:
            self.query_one(SearchTable).show(self.stage_name, search)
            self._show_summary()  # which says where the table is

    # ---- chart -------------------------------------------------------------------------------
    def _draw_chart_soon(self) -> None:
        """Redraw at most CHART_HZ times a second: a fast stage logs many steps a second."""
        if self._chart_timer is not None:
            return  # a redraw is already due
        wait = self._last_draw + 1 / CHART_HZ - time.monotonic()
        if wait <= 0:
            self._draw_chart()
        else:
            self._chart_timer = self.set_timer(wait, self._draw_chart)

    def _draw_chart(self) -> None:
        self._last_draw = time.monotonic()
        if self._chart_timer is not None:
            self._chart_timer.stop()
            self._chart_timer = None
        train, val = self.series
        axis = self.axis if self.axis == "step" or all(t is not None for t in train.tokens) else "step"
        train_label = train_loss_label(self.stage_name)
        train_chart, val_chart = self.query_one("#loss-chart", LossChart), self.query_one("#val-chart", LossChart)
        train_chart.empty_text = f"{self.stage_name}: no metrics yet" if self.stage_name else "no stage"
        val_chart.empty_text = f"{self.stage_name}: no validation yet" if self.stage_name else ""
        # one x range for both panels: a validation point sits under the train step it was taken at
        xs = [x for s in (train, val) for x in s.xs(axis)[:1] + s.xs(axis)[-1:]]
        span = (min(xs), max(xs)) if xs else None
        train_chart.show([Curve(train_label, train.xs(axis), train.loss, "blue")],
                         xlabel=f"{axis}   smoothing {SMOOTHING_LEVELS[self.smoothing_i]}", x_span=span,
                         **self.chart_options())
        options = {**self.chart_options(), "smoothing": 0.0}  # a few val points: drawn as they are
        val_chart.show([Curve("val", val.xs(axis), val.loss, "red", smooth=False, points=len(val) == 1)],
                       xlabel=axis, x_span=span, **options)

    # ---- actions -----------------------------------------------------------------------------
    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_follow(self) -> None:
        self.follow = True
        if self.run and self.run.current:
            self._select(self.run.current.name)

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_cancel(self) -> None:
        request_cancel(self.app, self.run)

    def action_resume(self) -> None:
        request_resume(self.app, self.run)

    def action_edit(self) -> None:
        if self.run_layout.experiment_file.exists():
            self.post_message(EditExperiment(self.run_layout.experiment_file, as_copy=True))

    def action_export(self) -> None:
        """The selected stage's student as a Hugging Face folder (slimlab-engine export)."""
        from app.screens.actions import request_export
        from engine.contract import student_or_none

        student = student_or_none(self.stage_name) if self.stage_name else None
        if student is None:
            self.notify("pick a student's stage (prune-NAME or distill-NAME), then ctrl+e", severity="warning")
            return
        request_export(self.app, self.path, student)


@dataclass
class _StageFiles:
    """The reader worker's incremental readers of one selected stage (a new selection: new readers)."""

    generation: int
    stage: str | None
    layout: RunLayout
    tail: LogTail | None = field(init=False)
    curves: StageCurves | None = field(init=False)

    def __post_init__(self) -> None:
        self.tail = LogTail(self.layout.log_file(self.stage)) if self.stage else None
        self.curves = StageCurves(self.layout.metrics_file(self.stage)) if self.stage else None


def _text(path: Path) -> str:
    """A watched file's text ("" when it is gone or unreadable)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def train_loss_label(stage: str | None) -> str:
    """A distill stage's train loss is its KD loss (teacher vs student), not a cross-entropy."""
    from engine.contract import kind_or_none

    kind = kind_or_none(stage)
    return kind.train_loss if kind else "train"


def _may_search(stage: str | None) -> bool:
    """Only a prune stage (method = "search") writes a search.json."""
    from engine.contract import kind_or_none

    kind = kind_or_none(stage)
    return kind is not None and kind.may_search


def _status_text(text: str) -> str:
    """status.json as `key: value` lines, with the state a reader should believe."""
    from engine.contract import effective_state

    try:
        doc = json.loads(text)
    except ValueError:
        return text or "(no status.json yet)"
    if not isinstance(doc, dict):
        return text
    eff = effective_state(doc)
    lines = [f"{k:<12} {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in doc.items()]
    if eff != doc.get("state"):
        lines.insert(0, f"{'shown as':<12} {eff} (process {doc.get('pid')} is gone)")
    return "\n".join(lines)
