"""What readers need from a stage's metrics.jsonl: the one summariser of the TUI, `status` and `compare`.

`MetricsSummary.update()` reads only what was appended since the last call and starts over when the
file is replaced or truncated (resume), through the one reader of metrics.jsonl (metrics_reader: it
also decides which lines count). Without `history`, a big file seen for the first time is read from
its tail only, so the TUI opens 100 long runs quickly; with `history` (status, compare) the whole file
is read and the validation records and train speeds are kept.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.contract.files import parse_iso
from engine.contract.metrics_reader import Change, MetricsCursor, last_record_before, parse_record

TAIL_BYTES = 32 * 1024  # first read of a metrics file without history: only its last 32 KiB

FileKey = tuple[int, int, int]  # (inode, mtime, size)


def stat_key(path: str | Path) -> FileKey | None:
    """(inode, mtime, size): changes when a file is rewritten or replaced; None when it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class MetricsSummary:
    """The last train and validation records of a metrics.jsonl (and, with `history`, every validation
    record and train speed), kept up to date incrementally by `update()`."""

    history: bool = False
    last_train: dict[str, Any] | None = None
    last_val: dict[str, Any] | None = None
    tokens: int | None = None  # the last train record's token count
    rate_ref: tuple[float, int] | None = None  # (time, step) of an early train record, for the ETA
    vals: list[dict[str, Any]] = field(default_factory=list)  # with history: every validation record
    speeds: list[float] = field(default_factory=list)  # with history: every train record's tokens/s
    cursor: MetricsCursor | None = field(default=None, repr=False, compare=False)

    def _reset(self) -> None:
        cursor = self.cursor
        self.__init__(history=self.history)  # type: ignore[misc]
        self.cursor = cursor

    def update(self, path: str | Path) -> None:
        """Read what was appended since the last call."""
        if self.cursor is None or str(self.cursor.path) != str(path):
            self.cursor = MetricsCursor(path)
        change = self.cursor.check()
        if change in (Change.GONE, Change.RESET):  # gone: a resume truncation in progress
            self._reset()
        if change is Change.RESET and not self.history:
            self._read_tail(self.cursor)
        for rec in self.cursor.records():
            self._take(rec)

    def _take(self, rec: dict[str, Any]) -> None:
        split = rec.get("split", "train")
        if split == "val":
            self.last_val = rec
            if self.history:
                self.vals.append(rec)
        elif split == "train":
            self.last_train = rec
            if isinstance(rec.get("tokens"), int):
                self.tokens = rec["tokens"]
            if self.history and _number(rec.get("tokens_per_s")):
                self.speeds.append(float(rec["tokens_per_s"]))
            if self.rate_ref is None:
                self._rate_from(rec)

    def _rate_from(self, rec: dict[str, Any]) -> None:
        t = parse_iso(rec.get("time"))
        if t is not None and isinstance(rec.get("step"), int):
            self.rate_ref = (t.timestamp(), rec["step"])

    def _read_tail(self, cursor: MetricsCursor) -> None:
        """First sight of a file: parse just its first line in the last TAIL_BYTES (for the ETA's
        rate), then the last train and the last val records, scanning backwards; never the whole
        file (100 runs x 7 stages x thousands of lines would delay the first frame)."""
        lines, start = cursor.tail_lines(TAIL_BYTES)
        first = next((r for r in map(parse_record, lines[:8]) if r and r.get("split", "train") == "train"), None)
        if first is not None:
            self._rate_from(first)
        for raw in reversed(lines):
            if self.last_train is not None and self.last_val is not None:
                break
            is_val = b'"val"' in raw
            if (self.last_val if is_val else self.last_train) is None:
                rec = parse_record(raw)
                if rec:
                    self._take_last(rec)
        if self.last_val is None and start > 0:  # val lines are rare: look further back, however far
            self.last_val = last_record_before(cursor.path, start, "val")

    def _take_last(self, rec: dict[str, Any]) -> None:
        split = rec.get("split", "train")
        if split == "val" and self.last_val is None:
            self.last_val = rec
        elif split == "train" and self.last_train is None:
            self.last_train = rec
            self.tokens = rec["tokens"] if isinstance(rec.get("tokens"), int) else None

    def rate(self) -> float | None:
        """Steps per second between the first and the last train record seen."""
        if not self.rate_ref or not self.last_train:
            return None
        t = parse_iso(self.last_train.get("time"))
        step = self.last_train.get("step")
        if t is None or not isinstance(step, int):
            return None
        dt, ds = t.timestamp() - self.rate_ref[0], step - self.rate_ref[1]
        return ds / dt if dt > 0 and ds > 0 else None

    @property
    def val_losses(self) -> list[dict[str, Any]]:
        """With history: the validation records that carry a loss, in order."""
        return [r for r in self.vals if _number(r.get("loss"))]

    @property
    def steady_tokens_per_s(self) -> float | None:
        """With history: the median train tokens/s, skipping the first quarter (warm-up steps)."""
        return statistics.median(self.speeds[len(self.speeds) // 4:] or self.speeds) if self.speeds else None


def read_metrics_summary(path: str | Path) -> MetricsSummary:
    """The summary of a whole metrics.jsonl, with its history (empty when the file is missing)."""
    summary = MetricsSummary(history=True)
    summary.update(path)
    return summary
