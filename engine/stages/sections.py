"""Which config sections a stage depends on: ONE rule, used by the config hash (planning),
the resume key and Compare's config diff.

A stage reads [model], [data] and the seed, its own section and, transitively, its inputs'
sections. A per-student kind reads its student's own settings of a per-student section (its
[[prune]] table, its [distill] with overrides); any other kind reads the whole section.
"""

from __future__ import annotations

from typing import Any

from engine.stages.names import BY_NAME, BY_SECTION, KINDS, ORDER, kind_of, student_or_none

BASE = ("model", "data", "seed")  # read by every stage
STUDENT_SECTIONS = tuple(k.section for k in KINDS if k.per_student and k.section)  # prune, distill


def _input_kinds(kind: str) -> list[str]:
    k = BY_NAME[kind]
    if "*" in k.inputs:
        return [x.name for x in KINDS[:ORDER[kind]]]
    return list(k.inputs)


def config_sections(kind: str) -> tuple[str, ...]:
    """The sections (besides BASE) a stage of `kind` depends on, in pipeline order."""
    seen: set[str] = set()
    todo = [kind]
    while todo:
        k = todo.pop()
        if k not in seen:
            seen.add(k)
            todo += _input_kinds(k)
    return tuple(k.section for k in KINDS if k.name in seen and k.section is not None)


def stage_settings(exp: Any, stage: str) -> dict[str, Any]:
    """{section: the settings `stage` reads} for its config_sections (not BASE): pydantic models,
    a list of [[prune]] tables, or None for an absent optional section."""
    kind, student = kind_of(stage), student_or_none(stage)
    out: dict[str, Any] = {}
    for section in config_sections(kind.name):
        owner = BY_SECTION[section]
        if kind.per_student and owner.per_student and owner.student_settings is not None and student is not None:
            out[section] = owner.student_settings(exp, student)
        else:
            out[section] = getattr(exp, section)
    return out


def own_settings(exp: Any, stage: str) -> Any:
    """The settings of the stage's own section: [finetune] for finetune, the student's [distill] (its
    overrides applied) for distill-<s>, its [[prune]] table for prune-<s>; None for prepare."""
    section = kind_of(stage).section
    return stage_settings(exp, stage)[section] if section is not None else None


def student_sections(stage: str) -> set[str]:
    """The sections a stage reads one student's values of (a prune stage: prune; a distill stage:
    prune and distill); none for a stage that is not a student's."""
    if student_or_none(stage) is None:
        return set()
    return {s for s in config_sections(kind_of(stage).name) if BY_SECTION[s].per_student}
