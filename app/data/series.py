"""Loss curves from metrics.jsonl: incremental loading, bounded down-sampling, smoothing for plotting."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from engine.contract import Change, MetricsCursor

SMOOTHING_LEVELS = (0.0, 0.6, 0.9, 0.97)  # EMA weights the chart cycles through
# Points a series keeps: a few times a wide terminal chart's columns, so merging shows nowhere,
# while a 200k-step run costs kilobytes, not its whole file.
MAX_POINTS = 4000


@dataclass
class Series:
    """Points of one curve. Past `max_points`, neighbours merge into their mean (step, tokens and loss
    weighted by how many records each holds), so the shape stays and memory is bounded; the first and
    the latest points stay as logged."""

    steps: list[int] = field(default_factory=list)
    tokens: list[int | None] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)  # records merged into each point
    max_points: int = MAX_POINTS
    stride: int = 1  # the most records a merged point holds now; doubles as the run grows

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.loss):
            self.weights = [1] * len(self.loss)

    def add(self, rec: dict) -> None:
        loss, step = rec.get("loss"), rec.get("step")
        if not isinstance(loss, (int, float)) or isinstance(loss, bool) or not math.isfinite(loss):
            return
        if not isinstance(step, int):
            return
        tok = rec.get("tokens")
        self._append(step, tok if isinstance(tok, int) else None, float(loss), 1)
        if len(self.loss) > self.max_points:
            self._compact()

    def _append(self, step: int, tok: int | None, loss: float, weight: int) -> None:
        self.steps.append(step)
        self.tokens.append(tok)
        self.loss.append(loss)
        self.weights.append(weight)

    def _compact(self) -> None:
        """Merge the points added since the last compaction; coarsen everything while still too many
        (at least a quarter of max_points then goes by before the next one: amortised O(1) per add)."""
        self._merge()
        while len(self.loss) > max(3, self.max_points * 3 // 4):  # 3: first, all the middle, last
            self.stride *= 2
            self._merge()

    def _merge(self) -> None:
        """Merge runs of neighbours holding at most `stride` records together, all but the first and last."""
        pts = list(zip(self.steps, self.tokens, self.loss, self.weights, strict=True))
        first, middle, last = pts[0], pts[1:-1], pts[-1]
        self.steps, self.tokens, self.loss, self.weights = [], [], [], []
        self._append(*first)
        group: list[tuple[int, int | None, float, int]] = []
        held = 0  # records in `group`
        for p in middle:
            if group and held + p[3] > self.stride:
                self._append(*_mean(group))
                group, held = [], 0
            group.append(p)
            held += p[3]
        if group:
            self._append(*_mean(group))
        self._append(*last)

    def xs(self, axis: str) -> list[float]:
        """x values for `axis` ("step" or "tokens"; tokens fall back to steps where missing)."""
        if axis == "tokens" and self.tokens and all(t is not None for t in self.tokens):
            return [float(t) for t in self.tokens]  # type: ignore[arg-type]
        return [float(s) for s in self.steps]

    def __len__(self) -> int:
        return len(self.loss)

    def snapshot(self) -> Series:
        """A copy for the UI thread while a worker keeps appending to this one."""
        return Series(list(self.steps), list(self.tokens), list(self.loss), list(self.weights),
                      self.max_points, self.stride)


def _mean(group: list[tuple[int, int | None, float, int]]) -> tuple[int, int | None, float, int]:
    """One point for `group`: its records' mean step, tokens (None when one lacks them) and loss."""
    if len(group) == 1:
        return group[0]
    n = sum(g[3] for g in group)
    step = round(sum(g[0] * g[3] for g in group) / n)
    tok = None if any(g[1] is None for g in group) else round(sum(g[1] * g[3] for g in group) / n)  # type: ignore[operator]
    return step, tok, sum(g[2] * g[3] for g in group) / n, n


@dataclass
class StageCurves:
    """Train and val series of one stage, read incrementally from its metrics.jsonl (engine.contract's
    MetricsCursor: appended bytes only, a chunk at a time, over again when the file is replaced)."""

    path: Path
    train: Series = field(default_factory=Series)
    val: Series = field(default_factory=Series)
    cursor: MetricsCursor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.cursor = MetricsCursor(self.path)

    def update(self) -> bool:
        """Read new complete lines; True when something was added (or the file was replaced)."""
        change = self.cursor.check()
        if change is Change.GONE:
            return False  # keep the curves shown: a resume is rewriting the file
        reset = change is Change.RESET
        if reset:
            self.train, self.val = Series(), Series()
        added = False
        for rec in self.cursor.records():
            split = rec.get("split", "train")
            if split == "val":
                self.val.add(rec)
            elif split == "train":
                self.train.add(rec)
            added = True
        return added or reset


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
