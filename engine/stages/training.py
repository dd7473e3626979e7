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
    val_curve=True, footprint="engine.resources.footprints:TRAINING",
)


def _distill_settings(exp: Any, student: str) -> Any:
    return exp.distill_for(student)  # [distill] with the student's `distill = {...}` applied


# [distill] keys students must agree on to share one teacher forward, and why. The first two decide which
# windows a step reads (with data.seq_length, the same for every student).
SHARED_KEYS = (
    ("seed", "they read other batches"),
    ("global_batch_size", "they read other batches"),
    ("micro_batch_size", "the teacher runs once per micro-batch"),
    ("float8", "the shared teacher's matmuls run in one precision"),
)


def sharing_conflicts(configs: dict[str, Any]) -> list[str]:
    """Why students of these [distill] configs cannot share a teacher forward ([] when they can):
    one line per key they differ in."""
    out = []
    for key, why in SHARED_KEYS:
        values = {name: getattr(cfg, key) for name, cfg in configs.items()}
        if len(set(values.values())) > 1:
            listed = ", ".join(f"{n} {str(v).lower() if isinstance(v, bool) else v}" for n, v in values.items())
            out.append(f"distill.{key} differs ({listed}): {why}")
    return out


DISTILL = StageKind(
    name="distill", body="engine.training.stage_bodies:distill_stage", output="model/config.json",
    processes=None, section="distill", optional=True, per_student=True, inputs=("prepare", "finetune", "prune"),
    group_body="engine.training.stage_bodies:distill_stages", parallel=True, val_curve=True,
    train_loss="KD train",  # teacher vs student, not a cross-entropy
    student_settings=_distill_settings, footprint="engine.resources.footprints:TRAINING",
)
