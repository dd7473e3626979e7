"""Running one stage as a process: status.json lifecycle, cancellation, clean user errors.

Every stage body is a function `body(ctx: StageContext) -> None`. `run_stage` wraps it so
that the contract holds whatever happens: succeeded / failed (with the error) / cancelled.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.config import Experiment
from engine.contract import RunLayout, StageStatus, teacher_source
from engine.errors import Cancelled, ConfigError, UserError
from engine.orchestration.launch import stage_gpu_ids


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

    def progress(self, step: int, **fields) -> None:
        if self.status is not None:
            self.status.update(step=step, **fields)


def has_checkpoint(path: str | Path) -> bool:
    """Whether a stage has written its model to `path` (a Hugging Face directory with config.json)."""
    return (Path(path) / "config.json").exists()


def teacher_checkpoint(ctx: StageContext) -> str:
    """The teacher that stage `ctx.stage` reads (see runs.teacher_source); a UserError naming the
    finetune stage to run first when [finetune] exists and its model is not written yet."""
    src = teacher_source(ctx.exp, ctx.layout)
    if ctx.exp.finetune is not None and not has_checkpoint(src):
        raise UserError(f"{ctx.stage}: no fine-tuned teacher at {src}; run the finetune stage first")
    return src


def _raise_cancelled(signum, frame):  # noqa: ARG001
    raise Cancelled(signal.Signals(signum).name)


def run_stage(exp: Experiment, stage: str, body: Callable[[StageContext], None],
              layout: RunLayout | None = None) -> int:
    """Run `body` as stage `stage` of `exp`; returns the process exit code."""
    layout = layout or RunLayout(exp.run_dir)
    stage_dir = layout.stage_dir(stage)
    stage_dir.mkdir(parents=True, exist_ok=True)
    status = StageStatus(stage_dir, stage, exp.stage_hash(stage)) if is_main_process() else None
    ctx = StageContext(exp=exp, stage=stage, layout=layout, status=status)
    signal.signal(signal.SIGTERM, _raise_cancelled)
    signal.signal(signal.SIGINT, _raise_cancelled)
    if status is not None:
        status.start(gpus=stage_gpu_ids())
    try:
        body(ctx)
    except Cancelled as e:
        if status is not None:
            status.finish("cancelled", f"cancelled by {e}")
        ctx.log(f"[{stage}] cancelled")
        return 130
    except (ConfigError, UserError) as e:
        if status is not None:
            status.finish("failed", e)
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except Exception as e:  # an engine bug or an environment failure: keep the traceback in the log
        traceback.print_exc()
        if status is not None:
            status.finish("failed", e)
        return 1
    if status is not None:
        status.finish("succeeded")
    return 0
