"""The kinds in pipeline order, and stage names: `<kind>` (prepare, finetune, eval) or
`<kind>-<student>` (prune-width, distill-width). The one place that parses a stage name."""

from __future__ import annotations

from engine.stages.eval import EVAL
from engine.stages.kind import StageKind
from engine.stages.prepare import PREPARE
from engine.stages.prune import PRUNE
from engine.stages.training import DISTILL, FINETUNE

KINDS: tuple[StageKind, ...] = (PREPARE, FINETUNE, PRUNE, DISTILL, EVAL)
BY_NAME: dict[str, StageKind] = {k.name: k for k in KINDS}
BY_SECTION: dict[str, StageKind] = {k.section: k for k in KINDS if k.section is not None}
ORDER: dict[str, int] = {k.name: i for i, k in enumerate(KINDS)}
OPTIONAL_SECTIONS = tuple(k.section for k in KINDS if k.optional and k.section)  # finetune, distill, eval


def stage_kind(stage: str) -> str:
    """`distill-width` -> `distill`."""
    return stage.split("-", 1)[0]


def stage_student(stage: str) -> str:
    """`distill-width` -> `width`: the [[prune]] student a prune or distill stage belongs to."""
    kind, sep, student = stage.partition("-")
    if not sep:
        raise ValueError(f"{stage}: not a student's stage")
    return student


def student_or_none(stage: str) -> str | None:
    """The student of a per-student stage, else None (`finetune`, or a name from elsewhere)."""
    return stage.partition("-")[2] if is_student_stage(stage) else None


def kind_of(stage: str) -> StageKind:
    return BY_NAME[stage_kind(stage)]


def kind_or_none(stage: str | None) -> StageKind | None:
    """The kind of a stage name read from disk or typed by a user; None when it is no stage's."""
    return BY_NAME.get(stage_kind(stage)) if stage else None


def is_student_stage(stage: str) -> bool:
    """A prune-<s> or distill-<s> stage (one per [[prune]] student)."""
    kind = BY_NAME.get(stage_kind(stage))
    return kind is not None and kind.per_student and "-" in stage


def sort_key(stage: str) -> tuple[int, str]:
    """Pipeline order for stage names found on disk (unknown kinds last)."""
    return ORDER.get(stage_kind(stage), len(KINDS)), stage
