"""Running one stage as a process: status.json lifecycle, cancellation, clean user errors.

Every stage body is a function `body(ctx: StageContext) -> None` (engine/contract/stage_context.py).
`run_stage` wraps it so that the contract holds whatever happens: succeeded / failed (with the
error) / cancelled.
"""

from __future__ import annotations

import signal
import sys
import traceback
from collections.abc import Callable

from engine.config import Experiment
from engine.contract import RunLayout, StageStatus
from engine.contract.stage_context import StageContext, is_main_process
from engine.errors import Cancelled, ConfigError, UserError
from engine.orchestration.launch import stage_gpu_ids


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
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # a terminal hangup cancels too
        signal.signal(sig, _raise_cancelled)
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
