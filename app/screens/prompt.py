"""A one-line question with an editable answer (where to export a student); enter answers, esc
answers None."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from app.textual_workarounds import InOrderInput


class PromptScreen(ModalScreen[str | None]):
    DEFAULT_CSS = "PromptScreen { align: center middle; } PromptScreen #prompt-answer { margin-top: 1; }"
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, answer: str = ""):
        super().__init__()
        self.question, self.answer = question, answer

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, id="question", markup=False)
            yield InOrderInput(self.answer, id="prompt-answer", compact=True)
            yield Static("enter: go   esc: cancel", classes="dim")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)
