"""The stages of the run under the cursor, below the runs table."""

from __future__ import annotations

from rich.text import Text

from app.data import fmt
from app.textual_workarounds import StableTable
from app.widgets.style import cell_look, state_text
from engine.contract import RunInfo, StageInfo

COLUMNS = (("stage", "Stage", 16), ("state", "State", 11), ("progress", "Progress", 18), ("train", "Train", 7),
           ("val", "Val", 7), ("eta", "ETA", 6), ("tps", "tok/s", 7), ("gpus", "GPUs", 5))


def progress_text(s: StageInfo, width: int = 8) -> Text:
    frac = s.fraction
    steps = f" {s.step}/{s.total_steps}" if s.total_steps else (f" {s.step}" if s.step else "")
    return Text(fmt.bar(frac, width) + steps, no_wrap=True, overflow="ellipsis")


class StagesTable(StableTable):
    def __init__(self, **kwargs):
        super().__init__(cursor_type="row", show_cursor=False, **kwargs)
        self._run: RunInfo | None = None
        self._looks: list[tuple] | None = None  # what the rows read, to skip redrawing the same

    def on_mount(self) -> None:
        for key, label, width in COLUMNS:
            self.add_column(label, key=key, width=width)

    def show_run(self, run: RunInfo | None, restyle: bool = False) -> None:
        if run is self._run and not restyle:
            return
        self._run = run
        rows = [(s.name, state_text(self.app, s.state), progress_text(s), fmt.loss(s.train_loss),
                 fmt.loss(s.val_loss), fmt.duration(s.eta_s), fmt.si(s.tokens_per_s), fmt.gpus(s.gpus))
                for s in (run.stages if run else ())]
        looks = [tuple(cell_look(c) for c in row) for row in rows]
        if looks == self._looks and not restyle:
            return  # a new snapshot that reads the same (a running stage's heartbeat): keep the drawn rows
        old, self._looks = self._looks, looks
        if old is not None and not restyle and [o[0] for o in old] == [n[0] for n in looks]:
            # the same stages: rewrite the cells that read differently, redrawing only their rows
            for row, before, after in zip(rows, old, looks, strict=True):
                self.set_cells(row[0], {col: cell for (col, _, _), cell, b, a in zip(COLUMNS, row, before, after,
                                                                                     strict=True) if b != a})
            return
        self.clear()
        for row in rows:
            self.add_row(*row, key=row[0])

