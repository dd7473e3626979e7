"""Loss curves from metrics.jsonl: incremental loading, smoothing, down-sampling for plotting."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.contract import read_metrics

SMOOTHING_LEVELS = (0.0, 0.6, 0.9, 0.97)  # EMA weights the chart cycles through


@dataclass
class Series:
    steps: list[int] = field(default_factory=list)
    tokens: list[int | None] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)

    def add(self, rec: dict) -> None:
        loss, step = rec.get("loss"), rec.get("step")
        if not isinstance(loss, (int, float)) or isinstance(loss, bool) or not math.isfinite(loss):
            return
        if not isinstance(step, int):
            return
        self.steps.append(step)
        tok = rec.get("tokens")
        self.tokens.append(tok if isinstance(tok, int) else None)
        self.loss.append(float(loss))

    def xs(self, axis: str) -> list[float]:
        """x values for `axis` ("step" or "tokens"; tokens fall back to steps where missing)."""
        if axis == "tokens" and self.tokens and all(t is not None for t in self.tokens):
            return [float(t) for t in self.tokens]  # type: ignore[arg-type]
        return [float(s) for s in self.steps]

    def __len__(self) -> int:
        return len(self.loss)

    def snapshot(self) -> Series:
        """A copy for the UI thread while a worker keeps appending to this one."""
        return Series(list(self.steps), list(self.tokens), list(self.loss))


@dataclass
class StageCurves:
    """Train and val series of one stage, read incrementally from its metrics.jsonl."""

    path: Path
    train: Series = field(default_factory=Series)
    val: Series = field(default_factory=Series)
    offset: int = 0
    ino: int | None = None

    def update(self) -> bool:
        """Read new complete lines; True when something was added (or the file was replaced)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        reset = st.st_ino != self.ino or st.st_size < self.offset
        if reset:  # rewritten on resume (truncate_metrics_after): start over
            self.train, self.val, self.offset, self.ino = Series(), Series(), 0, st.st_ino
        if st.st_size == self.offset:
            return reset
        records, self.offset = read_metrics(self.path, self.offset)
        for rec in records:
            split = rec.get("split", "train")
            if split == "val":
                self.val.add(rec)
            elif split == "train":
                self.train.add(rec)
        return bool(records) or reset


def ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing)."""
    if weight <= 0 or not values:
        return list(values)
    out, last, norm = [], 0.0, 0.0
    for v in values:
        last = last * weight + (1 - weight) * v
        norm = norm * weight + (1 - weight)
        out.append(last / norm)
    return out


def downsample(xs: list[float], ys: list[float], max_points: int) -> tuple[list[float], list[float]]:
    """At most max_points points, evenly picked, always keeping the last one."""
    n = len(xs)
    if n <= max_points or max_points < 2:
        return xs, ys
    idx = [round(i * (n - 1) / (max_points - 1)) for i in range(max_points)]
    return [xs[i] for i in idx], [ys[i] for i in idx]
