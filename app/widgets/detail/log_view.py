"""The tail of a stage's stdout.log. Lines arrive in batches from a worker; the widget keeps the
last MAX_LINES so a stage printing 1,000 lines a second costs bounded memory and redraw time."""

from __future__ import annotations

from textual.widgets import Log

MAX_LINES = 5000


class LogView(Log):
    def __init__(self, **kwargs):
        super().__init__(max_lines=MAX_LINES, auto_scroll=True, **kwargs)
        self.total_lines = 0  # lines received since the stage was selected (tests, status line)

    def append(self, lines: list[str]) -> None:
        if lines:
            self.total_lines += len(lines)
            self.write_lines(lines[-MAX_LINES:])

    def reset(self) -> None:
        self.clear()
        self.total_lines = 0
