"""The runs table: one row per run, updated in place from scanner snapshots."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding

from app.data import fmt
from app.textual_workarounds import StableTable
from app.widgets.style import cell_look, run_state_text, stage_strip
from engine.contract import RunInfo

# key, label, width: sized so Run..ETA fit 80 columns; the rest scrolls horizontally. State holds
# "⊘ cancelling…" whole; Stages folds a long pipeline to counts (style.stage_strip)
COLUMNS = (
    ("run", "Run", 15), ("state", "State", 13), ("stages", "Stages", 7), ("progress", "Progress", 11),
    ("train", "Train", 7), ("val", "Val", 7), ("eta", "ETA", 6), ("stage", "Stage", 16),
    ("tps", "tok/s", 7), ("gpus", "GPUs", 5), ("age", "Age", 4),
)


STAGES_WIDTH = dict((k, w) for k, _, w in COLUMNS)["stages"]


def row_cells(app, run: RunInfo, now: float) -> tuple:
    cur = run.current
    frac = cur.fraction if cur else None
    m = cur  # losses: the current stage's, or for a finished run the last stage that logged some
    if run.state != "running" and (cur is None or (cur.train_loss is None and cur.val_loss is None)):
        m = next((s for s in reversed(run.stages) if s.train_loss is not None or s.val_loss is not None), cur)
    progress = Text(fmt.bar(frac, 6) + (f" {frac * 100:3.0f}%" if frac is not None else ""))
    # Text, not str: DataTable parses a str cell as markup each time it measures or renders it
    return (
        Text(run.name, overflow="ellipsis", no_wrap=True),
        run_state_text(app, run),
        stage_strip(app, [s.state for s in run.stages], width=STAGES_WIDTH),
        progress,
        Text(fmt.loss(m.train_loss if m else None)),
        Text(fmt.loss(m.val_loss if m else None)),
        Text(fmt.duration(cur.eta_s if cur else None)),
        Text(cur.name if cur else "–", overflow="ellipsis", no_wrap=True),
        Text(fmt.si(cur.tokens_per_s if cur else None)),
        Text(fmt.gpus(run.gpus)),
        Text(fmt.age(now - run.created)),
    )


# New rows added per refresh: DataTable measures every cell of a new row on its next idle,
# so 100 rows at once would block the event loop for ~100 ms; the rest follow a frame later.
ROWS_PER_BATCH = 24


class RunsTable(StableTable):
    """Rows keyed by run path; only rows whose run snapshot (or age) changed are rewritten. The Run
    column stays in view when the others scroll sideways (80 columns show Run..ETA)."""

    BINDINGS = [
        Binding("end,G", "scroll_bottom", "Last run", show=False),
        Binding("home,g", "scroll_top", "First run", show=False),
    ]

    def __init__(self, **kwargs):
        super().__init__(cursor_type="row", zebra_stripes=True, fixed_columns=1, **kwargs)
        self._shown: dict[str, tuple[RunInfo, tuple, tuple]] = {}  # run, (age, cancelling) shown, cells
        self.runs: dict[str, RunInfo] = {}
        self._pending: tuple[list[RunInfo], bool] | None = None  # newest snapshot not yet all added

    def on_mount(self) -> None:
        for key, label, width in COLUMNS:
            self.add_column(label, key=key, width=width)

    def update_runs(self, runs: list[RunInfo], restyle: bool = False) -> None:
        if self._pending is not None:  # a batch is due: it will take this newer snapshot
            self._pending = (runs, restyle or self._pending[1])
            return
        now = self.app.clock()
        wanted = {str(r.path): r for r in runs}
        for key in list(self._shown):
            if key not in wanted:
                self.remove_row(key)
                del self._shown[key]
        added = 0
        for key, run in wanted.items():
            age = (fmt.age(now - run.created), run.path in self.app.cancelling)  # what else the row shows
            prev = self._shown.get(key)
            if prev is not None and prev[0] is run and prev[1] == age and not restyle:
                continue
            if prev is None and added >= ROWS_PER_BATCH:
                if self._pending is None:
                    self._pending = (runs, restyle)
                    self.call_after_refresh(self._add_pending)
                continue
            cells = row_cells(self.app, run, now)
            if prev is None:
                self.add_row(*cells, key=key)
                added += 1
            else:  # only the cells that read differently, redrawing only this row (StableTable.set_cells)
                self.set_cells(key, {col: cell for (col, _, _), cell, old in zip(COLUMNS, cells, prev[2], strict=True)
                                     if restyle or cell_look(cell) != cell_look(old)})
            self._shown[key] = (run, age, cells)
        self.runs = {k: r for k, r in wanted.items() if k in self._shown}
        if added:  # newest first, like the scanner's order (names are unique in a runs dir)
            order = {r.name: i for i, r in enumerate(runs)}
            cursor_key = self.highlighted_key()
            self.sort("run", key=lambda cell: order.get(cell.plain, 0))
            if cursor_key is not None:
                self.move_cursor(row=self.get_row_index(cursor_key), animate=False)

    def _add_pending(self) -> None:
        if self._pending is not None and self.is_attached:
            runs, restyle = self._pending
            self._pending = None
            self.update_runs(runs, restyle)

    def highlighted_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:  # cursor outside the table while rows change
            return None

    def highlighted_run(self) -> RunInfo | None:
        key = self.highlighted_key()
        return self.runs.get(key) if key else None
