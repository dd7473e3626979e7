"""Several distill stages trained in one process over one teacher forward per micro-batch
([distill] share_teacher; the orchestrator groups the stages: engine/orchestration/teacher_groups.py).

Each stage keeps its own `TrainingRecipe` (engine/training/loop.py): its context, status, metrics,
checkpoints and model/, its own accelerator (so a checkpoint holds its student alone) and its own
Trainer. What they share: the teacher, loaded once (`step.shared_teacher`, keeping the layers every
student's hidden-state map reads), and the data stream, read once per step. `SharedTraining.run`
steps them together through `launch_shared`; everything else is the recipe's own code.

Resumed students may stand at different steps: the stream starts at the lowest, and a student
further ahead sits out until the group reaches its step (the windows of a step depend only on the
step, given the same seed and global_batch_size). A student that reaches its last step writes its
model and leaves the group; one that fails (a UserError: divergence, a full disk) leaves it too,
and the others go on.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from engine.config import TrainConfig
from engine.contract.stage_context import StageContext
from engine.errors import Cancelled, UserError
from engine.training.loop import Models, TrainingRecipe
from engine.training.setup import make_accelerator
from engine.training.shared_teacher import launch_shared
from engine.training.step import shared_teacher
from engine.training.stop_flag import StopFlag

# build(cuda, meta, teacher): one student's Models over the teacher model loaded once
GroupBuild = Callable[[bool, dict[str, Any], nn.Module], Models]


def run_shared_training(ctxs: list[StageContext], cfgs: list[TrainConfig], section: str,
                        builds: list[GroupBuild], load_teacher: Callable[[bool], nn.Module]
                        ) -> dict[str, BaseException | None]:
    """Train the stages `ctxs` together; each stage's outcome (None: succeeded; Cancelled on
    SIGTERM/SIGINT, after every unfinished student saved its checkpoint)."""
    from engine.data import read_meta

    cuda = torch.cuda.is_available()
    meta = read_meta(ctxs[0].layout.data_dir)
    teacher_model = load_teacher(cuda)
    models = [build(cuda, meta, teacher_model) for build in builds]
    exp = ctxs[0].exp
    acc = make_accelerator(exp.launch.strategy, exp.launch.mixed_precision)  # the teacher's device
    teacher = shared_teacher(acc, teacher_model, [m.hidden for m in models],
                             compile_=cuda and any(c.compile for c in cfgs), float8=cfgs[0].float8)
    recipes = [TrainingRecipe(ctx, cfg, section, lambda _cuda, _meta, m=m: replace(m, teacher=teacher))
               for ctx, cfg, m in zip(ctxs, cfgs, models, strict=True)]
    _same_micro_batch(recipes)
    for r in recipes:
        r._log(f"sharing one teacher forward with {', '.join(o.ctx.stage for o in recipes if o is not r)}")
    return SharedTraining(recipes).run()


def _same_micro_batch(recipes: list[TrainingRecipe]) -> None:
    """One micro-batch size for the group (the teacher runs once per micro-batch): with "auto", each
    student searched with the ones before it on the device; all take the smallest pick."""
    size = min(r.trainer.micro for r in recipes)
    for r in recipes:
        t = r.trainer
        if t.micro == size:
            continue
        accumulation = max(1, r.cfg.global_batch_size // (size * r.world))
        if t.master and accumulation > 1 and r.world > 1:
            raise UserError(f"{r.ctx.stage}: micro_batch_size auto picked {t.micro} here and {size} for another "
                            "student; set distill.micro_batch_size, or share_teacher = false")
        r._log(f"micro_batch_size {size}, the group's smallest (not {t.micro})")
        t.micro, t.accumulation = size, accumulation
        r.state.micro_batch_size = size


class SharedTraining:
    """Recipes stepped together over one data stream and one teacher forward per micro-batch."""

    def __init__(self, recipes: list[TrainingRecipe]):
        self.live = list(recipes)  # not finished and not failed
        self.outcome: dict[str, BaseException | None] = {}

    def _guard(self, r: TrainingRecipe, part: Callable[[], None]) -> bool:
        """Run one recipe's `part`; a UserError takes that student out of the group (its outcome)."""
        try:
            part()
            return True
        except UserError as e:
            r._log(f"failed, leaving the group: {e}")
            self.outcome[r.ctx.stage] = e
            self.live.remove(r)
            r.metrics.close()
            return False

    def run(self) -> dict[str, BaseException | None]:
        for r in list(self.live):
            self._guard(r, r.open)
        for r in list(self.live):
            self._guard(r, r.start_training)
        try:
            with StopFlag(*(r.ctx.status for r in self.live)) as stop:
                self._train(stop)
            for r in list(self.live):
                self._done(r)
        except Cancelled as e:
            for r in list(self.live):
                self._guard(r, r.save_cancelled)
            self._end_live(e)
        except Exception as e:  # an engine bug: the students still in the group fail, the others stand
            traceback.print_exc()
            self._end_live(e)
        return self.outcome

    def _end_live(self, e: BaseException) -> None:
        for r in self.live:
            r.metrics.close()
            self.outcome[r.ctx.stage] = e
        self.live = []

    def _active(self) -> list[TrainingRecipe]:
        return [r for r in self.live if r.state.step < r.cfg.steps]

    def _train(self, stop: StopFlag) -> None:
        active = self._active()
        if not active:
            return
        lead = min(active, key=lambda r: r.state.step)
        windows, at = lead.train_windows, lead.state.step  # the stream and the step it is at
        while active := self._active():
            step = min(r.state.step for r in active)
            while at < step:  # the students of the steps between have left the group
                lead.next_batches(windows)
                at += 1
            members = [r for r in active if r.state.step == step]
            batches = members[0].next_batches(windows)
            at += 1
            starts = [r.times.start() for r in members]
            pending = launch_shared([r.trainer for r in members], batches, [r.lr() for r in members],
                                    cancel=stop.signame is not None)
            for r, start, launched in zip(members, starts, pending, strict=True):
                self._guard(r, lambda r=r, start=start, launched=launched: r.launched(start, launched))
            if any(r.cancel_seen for r in members):  # every rank sees it at the same step
                raise Cancelled(stop.signame or "SIGTERM")
            for r in members:
                if r in self.live and self._guard(r, r.after_step) and r.state.step >= r.cfg.steps:
                    self._done(r)

    def _done(self, r: TrainingRecipe) -> None:
        """A student at its last step: its model/ written, out of the group."""
        if self._guard(r, r.drain) and self._guard(r, r.finish):
            r.metrics.close()
            self.outcome[r.ctx.stage] = None
            self.live.remove(r)
