"""A stage process: the one lifecycle of one stage, or of a group of N sharing one process.

Every stage body is a function `body(ctx: StageContext) -> None` (engine/contract/stage_context.py); a
group body (distill stages over one teacher forward: engine/orchestration/teacher_groups.py) takes the
contexts of its stages and returns each stage's outcome. `run_stages` wraps either so that every stage's
contract holds whatever happens: succeeded / failed (with the error) / cancelled. `run_stage` is the
group of one.

Each stage keeps its own files: its status.json (running with this process's pid, then its own end),
metrics, checkpoints, model/ and stdout.log. The process's stdout (the first stage's stdout.log under
the orchestrator) carries every stage's lines; the other stages' lines are also appended to their own
stdout.log.
"""

from __future__ import annotations

import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from engine.config import Experiment
from engine.contract import RunLayout, StageStatus
from engine.contract.files import open_append
from engine.contract.stage_context import StageContext, is_main_process
from engine.errors import Cancelled, ConfigError, UserError
from engine.orchestration.launch import stage_gpu_ids

Outcome = BaseException | None  # None: succeeded
GroupBody = Callable[[list[StageContext]], dict[str, Outcome]]


def _raise_cancelled(signum, frame):  # noqa: ARG001
    raise Cancelled(signal.Signals(signum).name)


@dataclass
class ProcessStageContext(StageContext):
    """A stage of this process: its lines go to the process's stdout and, when it is not the first
    stage (whose log that is), to its own stdout.log as well."""

    own_log: IO[str] | None = field(default=None, repr=False)

    def log(self, msg: str) -> None:
        super().log(msg)
        if self.is_main and self.own_log is not None:
            self.own_log.write(msg + "\n")
            self.own_log.flush()


def run_stage(exp: Experiment, stage: str, body: Callable[[StageContext], None],
              layout: RunLayout | None = None) -> int:
    """Run `body` as stage `stage` of `exp` (a group of one); returns the process exit code."""

    def one(ctxs: list[StageContext]) -> dict[str, Outcome]:
        body(ctxs[0])
        return {stage: None}

    return run_stages(exp, [stage], one, layout)


def run_stages(exp: Experiment, stages: list[str], body: GroupBody, layout: RunLayout | None = None) -> int:
    """Run `body` over the stages' contexts; the process exit code (0: all succeeded, 130: cancelled,
    2: a stage failed with a user error, 1: another failure)."""
    layout = layout or RunLayout(exp.run_dir)
    main = is_main_process()
    ctxs: list[ProcessStageContext] = []
    for i, stage in enumerate(stages):
        layout.stage_dir(stage).mkdir(parents=True, exist_ok=True)
        status = StageStatus(layout.stage_dir(stage), stage, exp.stage_hash(stage)) if main else None
        own = open_append(layout.log_file(stage), text=True) if main and i > 0 else None
        ctxs.append(ProcessStageContext(exp=exp, stage=stage, layout=layout, status=status, own_log=own))
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # a terminal hangup cancels too
        signal.signal(sig, _raise_cancelled)
    for ctx in ctxs:
        if ctx.status is not None:
            ctx.status.start(gpus=stage_gpu_ids())
    try:
        outcome = body(list(ctxs))
    except (Cancelled, ConfigError, UserError) as e:
        outcome = {c.stage: e for c in ctxs}
    except Exception as e:  # an engine bug or an environment failure: keep the traceback in the log
        traceback.print_exc()
        outcome = {c.stage: e for c in ctxs}
    # a stage the body did not report on was stopped with the others (a group cut short)
    codes = [_settle(ctx, outcome.get(ctx.stage, Cancelled("SIGTERM")), named=len(ctxs) > 1) for ctx in ctxs]
    for ctx in ctxs:
        if ctx.own_log is not None:
            ctx.own_log.close()
    return 130 if 130 in codes else max(codes)


def _settle(ctx: StageContext, result: Outcome, named: bool) -> int:
    """Write one stage's end into its status.json; its exit code. `named`: say which stage an error is of."""
    status = ctx.status
    if result is None:
        if status is not None:
            status.finish("succeeded")
        return 0
    if isinstance(result, Cancelled):
        if status is not None:
            status.finish("cancelled", f"cancelled by {result}")
        ctx.log(f"[{ctx.stage}] cancelled")
        return 130
    if status is not None:
        status.finish("failed", result)
    user = isinstance(result, (ConfigError, UserError))
    if user and ctx.is_main:
        print(f"error: {ctx.stage}: {result}" if named else f"error: {result}", file=sys.stderr, flush=True)
    return 2 if user else 1
