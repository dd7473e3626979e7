"""What the predictions start from and what a stage's disk need is: the shapes of the run's models
(without weights) and one stage's model and checkpoints on disk. No torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.config import Experiment
from engine.config.shape import Shape, count_params
from engine.resources.memory import Knobs, layer_activation_bytes
from engine.shapes.targets import student_shapes


@dataclass(frozen=True)
class Shapes:
    teacher: Shape
    students: dict[str, Shape]  # [[prune]] name -> the student's shape (a search: its largest candidate)
    # a search student: its candidate with the most activation bytes a token, where that is another one (the
    # deepest, in effect): at a large micro-batch its training holds more than the largest candidate's
    activation_bound: dict[str, Shape] = field(default_factory=dict)

    def bounds(self, name: str) -> tuple[Shape, ...]:
        """The shapes whose training needs bound student `name`'s (one, or a search's two)."""
        other = self.activation_bound.get(name)
        return (self.students[name],) if other is None else (self.students[name], other)


def experiment_shapes(exp: Experiment) -> Shapes | None:
    """The teacher's and students' shapes without weights; None when the teacher's config is not at
    hand offline or its vocabulary is not known yet (a scratch tokenizer not trained)."""
    _tc, teacher, students = student_shapes(exp)
    if teacher is None or teacher.vocab_size is None:
        return None
    out: dict[str, Shape] = {}
    deepest: dict[str, Shape] = {}
    for p, s in zip(exp.prune, students, strict=True):
        cands = [c.shape for c in getattr(s, "candidates", None) or []]
        out[p.name] = max(cands, key=count_params) if cands else s.shape
        if cands:
            most = max(cands, key=lambda c: c.num_layers * layer_activation_bytes(c, 2))
            if most != out[p.name]:
                deepest[p.name] = most
    return Shapes(teacher, out, deepest)


@dataclass(frozen=True)
class DiskNeed:
    stage: str
    model: int  # model/ (kept)
    checkpoint: int  # one checkpoint (0: the stage writes none)
    checkpoints_at_once: int  # kept + the one being written (0: none periodic; a cancel may write one)
    cache: int = 0  # the teacher's stored top-k logits it reads (teacher_logits = "cached"; students share it)

    @property
    def peak(self) -> int:
        """While it runs: its checkpoints, then model/ written beside the last one."""
        if not self.checkpoints_at_once:
            return self.model
        return max(self.checkpoint * self.checkpoints_at_once, self.checkpoint + self.model)


def checkpoint_bytes(params: int, k: Knobs) -> int:
    """One checkpoint: the fp32 weights (or, with master weights, the fp32 masters alone: the checkpoint
    keeps no bf16 copy, engine/training/step.py; with master_weights = "stochastic", the bf16 weights,
    the only copy) and the Adam moments."""
    return (2 if k.stochastic else 4) * params + int(k.state_bytes * params)
