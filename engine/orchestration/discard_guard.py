"""`run` never discards an interrupted stage's checkpoints on its own: a non-resumable `--set` (or an input
that reruns) would start the stage afresh and delete hours of training after one log line. Without
`--force` it is refused before anything is written, naming the checkpoint and the way to keep it.
Torch-free.
"""

from __future__ import annotations

from engine.config import Experiment
from engine.contract import RunLayout
from engine.contract.checkpoints import list_checkpoints
from engine.errors import ConfigError
from engine.orchestration.stage_actions import StageAction
from engine.stages import kind_of


def check_no_silent_discard(exp: Experiment, layout: RunLayout, plans: list[StageAction], force: bool) -> None:
    """ConfigError when a stage about to run holds a checkpoint that this run would throw away."""
    if force:
        return
    from engine.training.checkpoint import checkpoint_state, resume_key  # torch-free

    for p in plans:
        if p.action != "run" or not kind_of(p.stage).training:
            continue
        found = list_checkpoints(layout.checkpoints_dir(p.stage))
        if not found:
            continue
        step, path = found[-1]
        if p.keep_state and checkpoint_state(path).get("resume_key") == resume_key(exp, p.stage):
            continue  # the stage resumes from it (only resumable keys changed)
        why = "its settings changed in a way a checkpoint cannot follow" if p.keep_state else p.reason
        raise ConfigError(f"{exp.source}: {p.stage} has a checkpoint at step {step} that this run would discard "
                          f"({why}); undo the change to resume from it, or pass --force to start {p.stage} afresh")
