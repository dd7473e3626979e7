"""Progress of `prepare`: a rich bar with tokens/s on a terminal, plain log lines otherwise
(a stage's stdout usually goes to stdout.log), and status.json updates for the TUI."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from engine.contract import human_count

LOG_EVERY_S = 5.0
STATUS_EVERY_S = 2.0


def split_summary(meta: dict[str, Any]) -> str:
    """'train 1,234 tokens / 5 docs, validation ...' from a meta.json."""
    return ", ".join(f"{s} {info['tokens']:,} tokens / {info['documents']:,} docs"
                     for s, info in meta["splits"].items())


class PrepareProgress:
    """Counts records read and tokens written; shows them at a bounded rate."""

    def __init__(self, total_records: int, log: Callable[[str], None] = print,
                 status: Callable[..., None] | None = None, tty: bool | None = None):
        self.total = max(1, total_records)
        self.records = 0
        self.tokens = 0
        self.split = "train"
        self.log = log
        self.status = status
        self.t0 = time.perf_counter()
        self._last_log = self._last_status = self.t0
        self._bar: Any = None
        if tty if tty is not None else sys.stdout.isatty():
            self._start_bar()

    def _start_bar(self) -> None:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("[bold]prepare[/] {task.fields[split]:<10}"), BarColumn(),
                             TaskProgressColumn(), TextColumn("{task.fields[tokens]} tokens"),
                             TextColumn("{task.fields[rate]} tokens/s"), TimeElapsedColumn())
        self._task = self._bar.add_task("prepare", total=self.total, split=self.split, tokens="0", rate="-")
        self._bar.start()

    @property
    def elapsed(self) -> float:
        return max(time.perf_counter() - self.t0, 1e-9)

    @property
    def rate(self) -> float:
        return self.tokens / self.elapsed

    def advance(self, records: int = 0, tokens: int = 0, split: str | None = None) -> None:
        self.records += records
        self.tokens += tokens
        self.split = split or self.split
        now = time.perf_counter()
        if self._bar is not None:
            self._bar.update(self._task, completed=self.records, split=self.split,
                             tokens=human_count(self.tokens), rate=human_count(self.rate))
        elif now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            self.log(self.line())
        if self.status is not None and now - self._last_status >= STATUS_EVERY_S:
            self._last_status = now
            self.status(step=int(100 * self.records / self.total), total_steps=100,
                        tokens=self.tokens, tokens_per_s=round(self.rate))

    def line(self) -> str:
        pct = 100 * self.records / self.total
        return (f"prepare: {pct:5.1f}% of documents read, {self.tokens:,} tokens "
                f"({human_count(self.rate)} tokens/s), now {self.split}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.total)
            self._bar.stop()
            self._bar = None
        if self.status is not None:
            self.status(step=100, total_steps=100, tokens=self.tokens, tokens_per_s=round(self.rate))
