"""The `prune-<student>` stages: one per [[prune]] table; calibrate, score, cut, write the student.

Calibration and pruning run on one GPU (an 8B model fits one 80 GB card in bf16). A student with
method = "search" also writes search.json (RunLayout.search_file; engine.search).
"""

from typing import Any

from engine.stages.kind import StageKind


def _prune_settings(exp: Any, student: str) -> Any:
    return exp.prune_by_name(student)


def earlier_student(importance_from: str, students: list[str]) -> str | None:
    """The student whose importance.json `importance_from` names ("width" or "prune-width"), when it is
    one of `students`; None for a file path."""
    name = PRUNE.student_of(importance_from) or importance_from
    return name if name in students else None


PRUNE = StageKind(
    name="prune", body="engine.prune.stage_body:prune_stage", output="model/config.json", processes=1,
    section="prune", optional=False, per_student=True, inputs=("prepare", "finetune"),
    val_curve=True, may_search=True, student_settings=_prune_settings,
    footprint="engine.resources.footprints:PRUNE",
)
