"""Which distill stages share one teacher forward ([distill] share_teacher): no torch import.

With share_teacher, the orchestrator starts one process for the distill stages that are due on the
same GPUs (`python -m engine distill FILE --stage distill-a --stage distill-b ...`), which trains
them together over one teacher forward per micro-batch (engine/training/shared_recipe.py).
Students can share only when they read the same batches in the same micro-batches:
`sharing_conflicts` (engine/stages/training.py) says why not.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.config import Experiment
from engine.stages import kind_of, stage_student
from engine.stages.training import sharing_conflicts


def teacher_group(exp: Experiment, candidates: list[str], gpus_of: Callable[[str], list[int]]
                  ) -> tuple[list[str], list[str]]:
    """The distill stages among `candidates` (due to run, inputs ready; the first one is about to
    start) that run in one process with the first: those on its GPUs, when share_teacher is on and
    they can share. Returns (the group, lines saying why others run on their own)."""
    first = candidates[0]
    if exp.distill is None or not exp.distill.share_teacher or kind_of(first).group_body is None:
        return [first], []
    if exp.launch.nodes > 1:
        return [first], ["share_teacher: one node only; the students run one by one"]
    gpus = gpus_of(first)
    group = [s for s in candidates if kind_of(s) is kind_of(first) and gpus_of(s) == gpus]
    why = [f"share_teacher: {s} runs on GPUs {gpus_of(s)}, not {gpus}: on its own"
           for s in candidates if kind_of(s) is kind_of(first) and s not in group]
    if len(group) < 2:
        return [first], why
    conflicts = sharing_conflicts({s: exp.distill_for(stage_student(s)) for s in group})
    if conflicts:
        return [first], why + [f"share_teacher: {', '.join(group)} run one by one: {c}" for c in conflicts]
    return group, why
