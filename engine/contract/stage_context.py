"""The writer side a stage body uses: `StageContext` (the experiment, the stage, its run directory and
the status.json it reports progress to) and the checks of what earlier stages left.

Every stage body is a function `body(ctx: StageContext) -> None`; the process lifecycle around it
(engine/orchestration/stage_process.py) builds the context. It lives in the contract, not with the
lifecycle, so the libraries the stages call (data, training, prune, evaluation, search) depend only
downwards. No torch import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.contract.layout import RunLayout, teacher_source
from engine.contract.status import StageStatus
from engine.errors import UserError

if TYPE_CHECKING:
    from engine.config import Experiment


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


@dataclass
class StageContext:
    exp: Experiment
    stage: str
    layout: RunLayout
    status: StageStatus | None  # None on non-main ranks: only rank 0 writes the contract

    @property
    def dir(self) -> Path:
        return self.layout.stage_dir(self.stage)

    @property
    def is_main(self) -> bool:
        return self.status is not None

    def log(self, msg: str) -> None:
        if self.is_main:
            print(msg, flush=True)

    def progress(self, step: int | None, **fields) -> None:
        """Status fields; `step` None leaves the step where it is (a figure that comes after the steps)."""
        if self.status is not None:
            self.status.update(step, **fields)


def has_checkpoint(path: str | Path) -> bool:
    """Whether a stage has written its model to `path` (a Hugging Face directory with config.json)."""
    return (Path(path) / "config.json").exists()


def teacher_checkpoint(ctx: StageContext) -> str:
    """The teacher that stage `ctx.stage` reads (engine.contract.layout.teacher_source); a UserError
    naming the finetune stage to run first when [finetune] exists and its model is not written yet."""
    src = teacher_source(ctx.exp, ctx.layout)
    if ctx.exp.finetune is not None and not has_checkpoint(src):
        raise UserError(f"{ctx.stage}: no fine-tuned teacher at {src}; run the finetune stage first")
    return src
