"""A dialog with several answers, each with its key (the file changed on disk: reload, overwrite or
keep both); esc answers None."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ChoiceScreen(ModalScreen[str | None]):
    DEFAULT_CSS = "ChoiceScreen { align: center middle; }"
    BINDINGS = [Binding("escape", "answer(None)", "Cancel")]

    def __init__(self, question: str, answers: list[tuple[str, str, str]]):
        """`answers`: (key, label, value) each, shown as buttons in order; the last is focused."""
        super().__init__()
        self.question, self.answers = question, answers
        self._by_key = {key: value for key, _label, value in answers}

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, id="question", markup=False)
            with Horizontal(id="dialog-buttons"):
                for key, label, value in self.answers:
                    yield Button(f"{label} ({key})", id=f"answer-{value}", compact=True)

    def on_mount(self) -> None:
        self.query(Button).last().focus()

    def on_key(self, event) -> None:
        if event.key in self._by_key:
            event.stop()
            self.dismiss(self._by_key[event.key])

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss((event.button.id or "").removeprefix("answer-"))

    def action_answer(self, value: str | None) -> None:
        self.dismiss(value)
