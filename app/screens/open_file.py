"""Pick an experiment file to load into Compose: experiments/*.toml and runs' resolved configs."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from app.screens.worker_results import while_shown
from app.textual_workarounds import InOrderInput
from engine.contract import RunLayout


class OpenFileScreen(ModalScreen[Path | None]):
    BINDINGS = [Binding("escape", "close", "Close"), Binding("down", "to_list", "Files", show=False),
                # a modal screen shuts out the app's bindings: j/k as in every list (the path field types them)
                Binding("j", "app.list_move('down')", show=False), Binding("k", "app.list_move('up')", show=False)]

    def __init__(self, experiments_dir: Path, runs_dir: Path):
        super().__init__()
        self.experiments_dir, self.runs_dir = experiments_dir, runs_dir
        self.files: list[Path] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="open-dialog"):
            yield Label("Open an experiment file: type a path or pick one (↓); enter loads, esc closes")
            yield InOrderInput(placeholder="path/to/experiment.toml", id="open-path", compact=True)
            yield OptionList(id="open-list")

    def on_mount(self) -> None:
        self._list_files()
        self.query_one("#open-path").focus()  # typing a path works at once; ↓ goes to the list

    @work(thread=True, exclusive=True)
    def _list_files(self) -> None:
        files = sorted(self.experiments_dir.glob("*.toml"))
        files += sorted(f for f in (RunLayout(p).experiment_file for p in self._run_dirs()) if f.exists())
        self.app.call_from_thread(self._show, files)

    def _run_dirs(self) -> list[Path]:
        try:
            return [p for p in self.runs_dir.iterdir() if p.is_dir()]
        except OSError:
            return []

    @while_shown
    def _show(self, files: list[Path]) -> None:
        self.files = files
        self._filter(self.query_one("#open-path", Input).value)

    def _filter(self, text: str) -> None:
        """The list shows the files whose path contains what is typed."""
        shown = [f for f in self.files if text.strip() in str(f)]
        box = self.query_one(OptionList)
        box.clear_options()
        box.add_options([Option(str(f), id=str(f)) for f in shown] or [Option("(no experiment files found)", disabled=True)])

    def on_input_changed(self, event: Input.Changed) -> None:
        self._filter(event.value)

    def action_to_list(self) -> None:
        box = self.query_one(OptionList)
        box.focus()
        if box.highlighted is None and box.option_count:
            box.highlighted = 0

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.dismiss(Path(event.option.id))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(Path(event.value.strip()).expanduser())

    def action_close(self) -> None:
        self.dismiss(None)
