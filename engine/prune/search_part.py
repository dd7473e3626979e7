"""The search inside a prune stage: screen every candidate, score the best of the screen, keep the
best, write search.json.

The screen: each candidate's loss right after pruning on the first `screen_batches` validation
windows (about a forward pass each); past `screen_max` candidates, that many spread evenly (the
log says so). Then the `top_k` best-screened get the full score (the scorer's: loss on every
window, a short distillation, or a task). With a speed budget (engine.search.speed_budget), the
candidates were narrowed to those predicted to meet it before this runs, and the best of the screen
are timed for real first: only those within the budget are scored, and search.json gets their speeds.

The teacher is calibrated once before this runs (engine.prune.stage_body); it is then sorted by
importance in place for the scoring (engine.prune.student.SortedTeacher), so each candidate is
made of views of its tensors, scored on the same batches and dropped. Afterwards the teacher is
back in its order and the winner is pruned from it as any student is (prune_student), to be
written as the stage's model/: the same function as the candidate that was scored.

search.json (the contract; engine.search.table.search_document writes it):

    {"target": {"metric": "params", "target": 81000000, "lo": ..., "hi": ..., "fraction": 0.6},
     "score": "loss", "selection": "lm-loss", "axes": [...], "calibration": {"samples": 1024, ...},
     "candidates": [{"shape": {"num_layers": 4, "hidden_size": 192, ...}, "params": 80123456,
                     "memory_gb": 0.31, "screen_loss": 4.3, "screen_rank": 1, "screen_seconds": 0.05,
                     "loss": 4.2, "score": 4.2, "rank": 1, "chosen": true, "seconds": 1.3}, ...],
     "screen": {"batches": 2, "screened": 278, "candidates": 278, "capped": false, "top_k": 10,
                "seconds": 14.2, "seconds_per_candidate": 0.051},
     "frontier": {"quality": "score", "axes": ["params", "memory_gb"], "points": [7, 3, 1], ...}}

Every candidate within the budget is listed; those not screened have the screen_* fields null,
those not scored have score, loss and rank null. "frontier": the Pareto frontier of the scored
candidates (engine.contract.frontier). "score_seeds": with score_seeds > 1 only, the data orders each distill
score is the mean of. With `audit = N` the prune stage then distils the N
best-scored in full and adds "audit" (engine/prune/audit_part.py; its shape: engine/search/audit.py).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.contract import write_json
from engine.contract.frontier import frontier
from engine.contract.stage_context import StageContext
from engine.evaluation.loss import evaluate_loss
from engine.prune.importance import Importance
from engine.prune.student import SortedTeacher, layers_to_drop, prune_student
from engine.search.scoring import Scorer
from engine.search.speed_budget import SpeedSearch
from engine.search.table import search_document
from engine.shapes.candidates import SearchSpace, candidate_label


@dataclass
class Winner:
    student: nn.Module
    index: int  # into space.candidates
    loss: float  # validation loss right after pruning
    drop: list[int]


class SearchProgress:
    """A rich bar with an ETA on a terminal; one log line per candidate (with the ETA) in the log.

    The ETA is the current phase's: a screened candidate costs about a forward pass and a scored one up to a
    short distillation (0.16 s against 23 s on SmolLM2), so a rate averaged over both would promise seconds
    for minutes of scoring. While screening it counts the screen only, and says so."""

    def __init__(self, ctx: StageContext, total: int, clock: Callable[[], float] = time.perf_counter):
        self.ctx, self.total, self.done, self.clock = ctx, total, 0, clock
        self.phase("search", total)
        self._bar: Any = None
        ctx.progress(0, total_steps=total)
        if ctx.is_main and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn(f"[bold]{ctx.stage}[/] candidates"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn())
            self._task = self._bar.add_task("search", total=total)
            self._bar.start()

    def phase(self, name: str, steps: int) -> None:
        """The next `steps` steps are of one kind (`name`): the ETA is timed on them alone."""
        self._name, self._left, self._done, self._t0 = name, steps, 0, self.clock()

    def eta(self) -> str:
        left = self._left - self._done
        seconds = (self.clock() - self._t0) / max(self._done, 1) * left
        return f"ETA {seconds:.0f}s" if left == self.total - self.done else f"{self._name} ETA {seconds:.0f}s"

    def step(self, line: str, log: bool = True) -> None:
        self.done += 1
        self._done += 1
        self.ctx.progress(self.done, total_steps=self.total)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        if log:
            self.ctx.log(f"[{self.ctx.stage}] step {self.done}/{self.total} {line}; {self.eta()}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


SCREEN_LOG_LINES = 20  # a screen of thousands logs about this many progress lines


def run_search(ctx: StageContext, space: SearchSpace, teacher: nn.Module, imp: Importance,
               windows: list[torch.Tensor], scorer: Scorer, speed: SpeedSearch | None = None) -> Winner:
    """Screen the candidates, score the best of the screen; write search.json; return the best one, pruned.
    With a speed budget (`speed`, which has narrowed `space`), the best of the screen that are timed
    within it are scored."""
    stage = ctx.stage
    ctx.log(f"[{stage}] {space.describe()}; scoring by {scorer.name}")
    if space.capped:
        ctx.log(f"[{stage}] {space.cap_message()}")
    screen_windows = windows[:space.screen_batches]
    screen: dict[int, float] = {}
    screen_s: dict[int, float] = {}
    scores: dict[int, float] = {}
    losses: dict[int, float] = {}
    seconds: dict[int, float] = {}
    n_scored = min(space.top_k, len(space.screened))
    progress = SearchProgress(ctx, len(space.screened) + n_scored)
    progress.phase("screen", len(space.screened))
    every = max(1, len(space.screened) // SCREEN_LOG_LINES)
    try:
        with SortedTeacher(teacher, imp) as sorted_teacher:
            for k, i in enumerate(space.screened):
                t0 = time.perf_counter()
                screen[i] = evaluate_loss(sorted_teacher.student(space.student(i)), screen_windows)
                screen_s[i] = time.perf_counter() - t0
                progress.step(f"screen {candidate_label(space.candidates[i].shape)}: loss {screen[i]:.4f}",
                              log=k % every == 0 or k == len(space.screened) - 1)
            order = sorted(screen, key=lambda i: (screen[i], i))
            best_screened = speed.finalists(order, n_scored) if speed is not None else order[:n_scored]
            total = sum(screen_s.values())
            ctx.log(f"[{stage}] screened {len(screen)} candidates on {len(screen_windows)} batches in {total:.1f}s "
                    f"({total / len(screen):.3f}s each); scoring the best {n_scored} by {scorer.name}")
            progress.phase("score", len(best_screened))
            for i in best_screened:
                t0 = time.perf_counter()
                losses[i], scores[i] = _score(sorted_teacher.student(space.student(i)), windows, scorer)
                seconds[i] = time.perf_counter() - t0
                progress.step(f"score {candidate_label(space.candidates[i].shape)}: "
                              f"{scorer.figures(scores[i], losses[i])} ({seconds[i]:.1f}s)")
    finally:
        progress.close()
    ranked = scorer.ranked(scores, losses)
    best = ranked[0]
    doc = search_document(space, scorer.name, scorer.higher_is_better, {"kind": imp.kind, **imp.meta}, ranked,
                          losses, scores, seconds, screen, screen_s)
    if scorer.seeds > 1:  # score_seeds: each score is the mean of this many short distillations
        doc["score_seeds"] = scorer.seeds
    if speed is not None:  # the timed speeds join the candidates, and the frontier's axes
        speed.annotate(doc)
        doc["frontier"] = frontier(doc["candidates"], scorer.higher_is_better)
    write_json(ctx.layout.search_file(stage), doc)
    target = space.student(best)
    drop = layers_to_drop(imp, space.teacher, target)
    how = scorer.figures(scores[best], losses[best]) + (": the best sum of the two ranks" if scorer.with_loss_rank else "")
    ctx.log(f"[{stage}] winner: {candidate_label(target.shape)} ({how}, rank 1 of "
            f"{len(scores)}; screen rank {order.index(best) + 1} of {len(screen)})"
            + (f", dropping layers {drop}" if drop else ""))
    return Winner(prune_student(teacher, imp, target, drop), best, losses[best], drop)


def _score(candidate: nn.Module, windows: list[torch.Tensor], scorer: Scorer) -> tuple[float, float]:
    """(validation loss, score) of a candidate. It is made of views of the teacher: no memory to
    give back afterwards (the allocator keeps the evaluation's blocks for the next one)."""
    loss = evaluate_loss(candidate, windows)
    return loss, loss if scorer.name == "loss" else scorer.score(candidate)
