"""The training stages: `finetune` (teacher correction, [finetune]) and `distill-<student>`
(logit distillation of each pruned student, [distill] plus the student's own overrides).

Both train on every GPU of the stage (DDP/FSDP, several machines) and keep their checkpoints
across reruns; distill students may share one teacher in one process, or run at once on
disjoint GPUs.
"""

from typing import Any

from engine.stages.kind import StageKind

FINETUNE = StageKind(
    name="finetune", body="engine.training.stage_bodies:finetune_stage", output="model/config.json",
    processes=None, section="finetune", optional=True, per_student=False, inputs=("prepare",),
    val_curve=True,
)


def _distill_settings(exp: Any, student: str) -> Any:
    return exp.distill_for(student)  # [distill] with the student's `distill = {...}` applied


DISTILL = StageKind(
    name="distill", body="engine.training.stage_bodies:distill_stage", output="model/config.json",
    processes=None, section="distill", optional=True, per_student=True, inputs=("prepare", "finetune", "prune"),
    group_body="engine.training.stage_bodies:distill_stages", parallel=True, val_curve=True,
    train_loss="KD train",  # teacher vs student, not a cross-entropy
    student_settings=_distill_settings,
)
