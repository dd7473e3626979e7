"""Runs (home): every run under --runs-dir, live; the stages of the one under the cursor."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.markup import escape as _escape
from textual.screen import Screen
from textual.widgets import DataTable, Input, Static

from app.messages import EditExperiment, OpenRun
from app.textual_workarounds import InOrderInput, KeepStyles
from app.widgets.home.runs_table import RunsTable
from app.widgets.home.stages_table import StagesTable
from app.widgets.keybar import KeyBar
from app.widgets.nav import NavBar
from app.widgets.run_progress import run_progress_text
from app.widgets.static_text import set_text
from app.widgets.style import error_markup, warning_markup
from engine.contract import RunInfo, RunLayout

FIRST_SCAN_WAIT_S = 0.3  # at most this long for the first screenful of runs before the first frame
CATCH_UP_DELAY_S = 0.05  # shown again: the tables take the snapshots that came meanwhile this much later
RUNS_TABLE_MIN = 7  # lines the runs table keeps when the stage preview grows (header, 5 runs, scrollbar)


class RunsScreen(KeepStyles, Screen):
    BINDINGS = [
        Binding("enter", "open", "Open", show=False),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("c", "cancel", "Cancel run"),
        Binding("r", "resume", "Resume"),
        Binding("e", "edit", "Edit copy"),
        Binding("m", "compare", "Compare"),
        Binding("n", "new", "New"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self):
        super().__init__()
        self.filter_text = ""
        self._stale: bool | None = None  # snapshots came while hidden (True: with a theme change)
        self._preview_height: int | None = None  # set by _fit_preview; None: the style sheet's

    def compose(self) -> ComposeResult:
        yield NavBar("runs")
        yield InOrderInput(placeholder="filter runs by name (esc clears)", id="runs-filter", compact=True)
        yield Static("", id="runs-empty")
        yield RunsTable(id="runs-table")
        with Vertical(id="runs-preview"):
            yield Static("", id="preview-title")
            yield StagesTable(id="stages-table")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#runs-filter").display = False
        self.app.runs_signal.subscribe(self, self._runs_changed)
        self.app.theme_changed_signal.subscribe(self, lambda _t: self._runs_changed(self.app.runs, restyle=True))
        self.app.adopt_first_scan(wait=FIRST_SCAN_WAIT_S)
        self._on_runs(self.app.runs)
        self.query_one(RunsTable).focus()

    # ---- data --------------------------------------------------------------------------------
    def _runs_changed(self, runs: list[RunInfo], restyle: bool = False) -> None:
        """A new snapshot (or theme). While another screen is shown, the tables are left as drawn
        and brought up to date once this screen is back on screen (see on_screen_resume): the
        catch-up redraws the rows that changed meanwhile (25-40 ms for a screenful), which at the
        switch back added to the frame that shows the screen."""
        if self.is_current:
            self._on_runs(runs, restyle)
        else:  # (also when hidden again before the catch-up timer fired)
            self._stale = bool(self._stale) or restyle

    def on_screen_resume(self) -> None:
        if self._stale is not None:
            restyle, self._stale = self._stale, None
            # after the frame that shows the screen (drawn from the tables' cached rows)
            self.set_timer(CATCH_UP_DELAY_S, lambda: self._runs_changed(self.app.runs, restyle))

    def _on_runs(self, runs: list[RunInfo], restyle: bool = False) -> None:
        shown = [r for r in runs if self.filter_text.lower() in r.name.lower()] if self.filter_text else runs
        table = self.query_one(RunsTable)
        table.update_runs(shown, restyle=restyle)
        empty = self.query_one("#runs-empty", Static)
        if not self.app.runs_loaded:
            set_text(empty, f"scanning {self.app.runs_dir}/ …")
        elif not runs:
            set_text(empty, f"No runs under {self.app.runs_dir}/ yet. Press 2 (Compose) to write an experiment "
                      "and launch it, or run `slimlab-engine run FILE --detach`: it appears here.")
        elif not shown:
            set_text(empty, f"no run matches '{self.filter_text}'")
        empty.display = not shown
        self._show_preview(restyle)

    def _show_preview(self, restyle: bool = False) -> None:
        run = self.query_one(RunsTable).highlighted_run()
        title = self.query_one("#preview-title", Static)
        if run is None:
            set_text(title, "", restyle)
        else:
            err = f"  {error_markup(run.state, run.error)}" if run.error else ""
            progress = _escape(run_progress_text(run, self.app.clock()))
            warn = "".join(f"\n{warning_markup(st, w)}" for st, w in run.warnings[:1])
            set_text(title, f"[b]{_escape(run.name)}[/b]  {progress}  {_escape(str(run.path))}{err}{warn}", restyle)
        self.query_one(StagesTable).show_run(run, restyle)
        self.call_after_refresh(self._fit_preview)  # measured once the title's new text is laid out

    def on_resize(self) -> None:
        self.call_after_refresh(self._fit_preview)

    def _fit_preview(self) -> None:
        """The stage preview as tall as the longest pipeline of the runs shown needs (all 7 stages of a
        typical run at 120x40; the style sheet's 9 lines showed 5 or 6), as long as the runs table
        keeps RUNS_TABLE_MIN lines; below that the stages table scrolls. Sized by every run shown,
        not the highlighted one, so moving the cursor does not resize the runs table under it."""
        preview, runs_table, stages = self.query_one("#runs-preview"), self.query_one(RunsTable), \
            self.query_one(StagesTable)
        space = preview.outer_size.height + runs_table.outer_size.height  # what the two share
        if not self.is_attached or not space:
            return  # not laid out yet
        rows = max((len(r.stages) for r in runs_table.runs.values()), default=0)
        above = preview.outer_size.height - stages.outer_size.height  # border and title
        want = above + stages.header_height + rows + stages.scrollbar_size_horizontal
        height = max(above + stages.header_height, min(want, space - RUNS_TABLE_MIN))
        if height != self._preview_height:
            self._preview_height = height
            preview.styles.height = height

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "runs-table":
            self._show_preview()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "runs-table":
            self.action_open()

    # ---- filter ------------------------------------------------------------------------------
    def action_filter(self) -> None:
        box = self.query_one("#runs-filter", Input)
        box.display = True
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self._on_runs(self.app.runs)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one(RunsTable).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#runs-filter", Input)
        box.value, box.display, self.filter_text = "", False, ""
        self._on_runs(self.app.runs)
        self.query_one(RunsTable).focus()

    # ---- run actions -------------------------------------------------------------------------
    def _run(self) -> RunInfo | None:
        return self.query_one(RunsTable).highlighted_run()

    def action_open(self) -> None:
        run = self._run()
        if run is not None:
            self.post_message(OpenRun(run.path))

    def action_cancel(self) -> None:
        from app.screens.actions import request_cancel  # not needed for the first frame

        request_cancel(self.app, self._run())

    def action_resume(self) -> None:
        from app.screens.actions import request_resume

        request_resume(self.app, self._run())

    def action_edit(self) -> None:
        run = self._run()
        if run is not None and RunLayout(run.path).experiment_file.exists():
            self.post_message(EditExperiment(RunLayout(run.path).experiment_file, as_copy=True))

    def action_compare(self) -> None:
        run = self._run()

        async def go() -> None:
            await self.app.switch_mode("compare")
            if run is not None:
                self.app.screen.preselect_run(run.path)

        self.app.call_later(go)

    async def action_new(self) -> None:
        """Compose with a new experiment; unsaved edits there are kept (and said so) instead."""
        await self.app.switch_mode("compose")
        compose = self.app.screen
        if self.app.compose_dirty:
            self.app.notify("Compose has unsaved edits: kept. ctrl+n starts a new experiment.", severity="warning")
        else:
            await compose.action_new()
