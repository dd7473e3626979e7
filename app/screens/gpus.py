"""GPUs: utilisation, memory and the run using each GPU (NVML). Only reachable when a GPU exists."""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Static
from textual.worker import get_current_worker

from app.data import fmt
from app.data.gpus import GpuSample, gpu_owners
from app.messages import OpenRun
from app.screens.worker_results import while_shown
from app.textual_workarounds import KeepStyles
from app.widgets.keybar import KeyBar
from app.widgets.nav import NavBar

POLL_S = 1.0
# sized to fit 80 columns: 64 cells + 2 padding per column
COLUMNS = (("gpu", "GPU", 3), ("name", "Name", 11), ("util", "Util", 11), ("mem", "Memory", 12),
           ("temp", "Temp", 4), ("power", "Power", 5), ("owner", "Used by", 18))


def _pct_bar(frac: float | None, width: int = 6) -> str:
    return fmt.bar(frac, width) + (f" {frac * 100:3.0f}%" if frac is not None else "")


class GpuScreen(KeepStyles, Screen):
    BINDINGS = [Binding("o", "open", "Open run")]

    def compose(self) -> ComposeResult:
        yield NavBar("gpus")
        yield Static("", id="gpu-note")
        yield DataTable(id="gpu-table", cursor_type="row", zebra_stripes=True)
        yield KeyBar()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, label, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        self.owners: dict[int, str] = {}
        self._poll()

    @work(thread=True, exclusive=True, group="gpus", name="sample GPUs")
    def _poll(self) -> None:
        worker = get_current_worker()
        while not worker.is_cancelled:
            probe = self.app.gpu_probe
            if probe is None:
                samples, error = [], "no GPU (NVML unavailable)"
            else:
                try:
                    samples, error = probe.sample(), None
                except Exception as e:  # a driver hiccup must not kill the screen
                    samples, error = [], f"NVML: {e}"
            owners = gpu_owners(samples, self.app.runs)
            try:
                self.app.call_from_thread(self._show, samples, owners, error)
            except RuntimeError:
                return
            time.sleep(POLL_S)

    @while_shown
    def _show(self, samples: list[GpuSample], owners: dict[int, str], error: str | None) -> None:
        self.owners = owners
        self.query_one("#gpu-note", Static).update(error or f"{len(samples)} GPU(s), refreshed every {POLL_S:g} s")
        table = self.query_one(DataTable)
        for g in samples:
            mem_frac = g.mem_used / g.mem_total if g.mem_total else None
            cells = (str(g.index), Text(g.name, overflow="ellipsis", no_wrap=True),
                     _pct_bar(g.util / 100 if g.util is not None else None),
                     f"{fmt.bar(mem_frac, 4)} {g.mem_used / 2**30:.0f}/{g.mem_total / 2**30:.0f}G" if g.mem_total else "–",
                     f"{g.temperature}°C" if g.temperature is not None else "–",
                     f"{g.power_w:.0f}W" if g.power_w is not None else "–",
                     owners.get(g.index, "–"))
            key = str(g.index)
            if key in table.rows:
                for (col, _, _), cell in zip(COLUMNS, cells, strict=True):
                    table.update_cell(key, col, cell)
            else:
                table.add_row(*cells, key=key)

    def action_open(self) -> None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return
        idx = int(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        owner = self.owners.get(idx)
        if owner:
            run_name, _, stage = owner.partition("/")
            self.post_message(OpenRun(Path(self.app.runs_dir) / run_name, stage))
