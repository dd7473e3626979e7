"""Compose's preview of an experiment, the one call the TUI makes past the contract and the config:
the file's text validated as `slimlab-engine check` validates it (the same loader, the same plan), the
teacher's size and each student's, in plain types.

Torch-free, at import and in `preview`: the TUI calls it as the user types (from a worker: it may read
config.json files). The engine modules it asks are imported in the call, so importing this module for
its types costs nothing at the TUI's start.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import Experiment

Shape3 = tuple[int, int, int]  # a model's (layers, hidden, ffn)


@dataclass
class StudentSize:
    name: str
    params: int | None = None  # None while the vocabulary size is unknown (scratch, before prepare)
    shrink: float | None = None  # teacher params / student params
    detail: str = ""


@dataclass
class Preview:
    error: str | None  # None: valid; else the first problem, one line (`check`'s ConfigError text)
    plan: list[str] = field(default_factory=list)  # `check`'s plan lines (when valid)
    stages: list[str] = field(default_factory=list)  # the stages, in order (when valid)
    teacher_params: int | None = None  # None while the vocabulary size is unknown
    teacher_detail: str = ""
    # the teacher's (layers, hidden, ffn) when its config is known, whether or not the students fit it
    teacher_shape: Shape3 | None = None
    students: dict[str, StudentSize] = field(default_factory=dict)  # those sized (all, when valid)
    more: list[str] = field(default_factory=list)  # the other students' errors (`check` stops at the first)

    @property
    def ok(self) -> bool:
        return self.error is None


def preview(text: str, source: str) -> Preview:
    """`text` (an experiment file's TOML) as `check` sees it: the plan (engine.orchestration.check.describe_plan,
    which checks every prune target against the teacher), then every student's size. When it is not valid,
    each student that is valid on its own (with the rest of the experiment) is still sized, so one invalid
    student does not blank the others, and their own errors are said too."""
    from engine.config import ConfigError, loads_experiment
    from engine.orchestration.check import describe_plan

    try:
        exp = loads_experiment(text, source=source)
        plan = describe_plan(exp)
    except ConfigError as e:
        result = Preview(str(e))
        raw = _raw(text)  # parsed once for both: each student alone, then the teacher alone
        if raw is not None:
            _size_valid_students(raw, source, result)
            if result.teacher_shape is None:  # no student fits it: the teacher alone
                result.teacher_shape = _teacher_shape(raw, source)
        return result
    result = Preview(None, plan=plan, stages=list(exp.stages()))
    _size_students(exp, result)
    return result


def _raw(text: str) -> dict[str, Any] | None:
    if sys.version_info >= (3, 11):  # as engine/config/toml_io.py (the project supports 3.10)
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None


def _loads(raw: dict[str, Any], source: str) -> Experiment:
    """`raw` changed (one student, or none) as its own file: ConfigError, or TypeError/ValueError for a
    value TOML cannot hold."""
    from engine.config import dumps_toml, loads_experiment

    return loads_experiment(dumps_toml(raw), source=source)


def _size_valid_students(raw: dict[str, Any], source: str, result: Preview) -> None:
    from engine.config import ConfigError

    for student in raw.get("prune") or []:
        alone = Preview("")
        try:
            _size_students(_loads({**raw, "prune": [student]}, source), alone)
        except ConfigError as e:
            if str(e) != result.error and str(e) not in result.more:
                result.more.append(str(e))  # another student's own error, said too
            continue
        except (TypeError, ValueError):
            continue
        result.students.update(alone.students)
        result.teacher_params, result.teacher_detail = alone.teacher_params, alone.teacher_detail
        result.teacher_shape = alone.teacher_shape


def _teacher_shape(raw: dict[str, Any], source: str) -> Shape3 | None:
    """The teacher's (layers, hidden, ffn) from its config, read as `check` reads it (no students)."""
    from engine.config import ConfigError
    from engine.contract import STUDENT_SECTIONS
    from engine.shapes.targets import teacher_config, teacher_shape

    # without the students' sections ([[prune]], [distill]: each wants a student)
    alone = {k: v for k, v in raw.items() if k not in STUDENT_SECTIONS}
    try:
        exp = _loads({**alone, "prune": []}, source)
        tc = teacher_config(exp)
        t = teacher_shape(exp, tc) if tc is not None else None
    except (ConfigError, TypeError, ValueError):
        return None
    return (t.num_layers, t.hidden_size, t.intermediate_size) if t is not None else None


def _size_students(exp: Experiment, result: Preview) -> None:
    """Parameter count and shrink factor of each student (engine.prune's arithmetic)."""
    from engine.config.shape import count_params
    from engine.shapes.targets import student_shapes

    for p in exp.prune:
        result.students[p.name] = StudentSize(p.name)
    _tc, teacher, plans = student_shapes(exp)
    if teacher is None:
        return
    result.teacher_shape = (teacher.num_layers, teacher.hidden_size, teacher.intermediate_size)
    result.teacher_params = count_params(teacher) if teacher.vocab_size else None
    result.teacher_detail = teacher.describe() + ("" if teacher.vocab_size else ", vocab known after prepare")
    for p, plan in zip(exp.prune, plans, strict=True):
        size = result.students[p.name]
        size.detail = plan.shape.describe()
        size.shrink = count_params(teacher) / max(count_params(plan.shape), 1)
        size.params = count_params(plan.shape) if plan.shape.vocab_size else None
