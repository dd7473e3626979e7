"""Each stage's predicted memory and disk, from the experiment and the launch it will get.

No torch: `check` and the TUI call this. Shapes come from engine.shapes.targets (the teacher's config,
the [[prune]] targets; a search student is sized by its largest candidate).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import Experiment
from engine.resources.memory import DTYPE_BYTES, Knobs, Need, forward_need, train_knobs, training_need
from engine.shapes.shape import Shape, count_params
from engine.shapes.targets import student_shapes
from engine.stages import PRUNE, kind_of, own_settings
from engine.stages.names import stage_kind, stage_student


@dataclass(frozen=True)
class Shapes:
    teacher: Shape
    students: dict[str, Shape]  # [[prune]] name -> the student's shape (a search: its largest candidate)


def experiment_shapes(exp: Experiment) -> Shapes | None:
    """The teacher's and students' shapes without weights; None when the teacher's config is not at
    hand offline or its vocabulary is not known yet (a scratch tokenizer not trained)."""
    _tc, teacher, students = student_shapes(exp)
    if teacher is None or teacher.vocab_size is None:
        return None
    out: dict[str, Shape] = {}
    for p, s in zip(exp.prune, students, strict=True):
        cands = getattr(s, "candidates", None)
        out[p.name] = max((c.shape for c in cands), key=count_params) if cands else s.shape
    return Shapes(teacher, out)


def stage_need(exp: Experiment, shapes: Shapes, stage: str, processes: int, cuda: bool,
               micro: int | None = None, knobs: Knobs | None = None) -> Need | None:
    """The stage's peak per process on `processes` GPUs (or the CPU); None for prepare (no model)."""
    kind = stage_kind(stage)
    seq = exp.data.seq_length
    e = DTYPE_BYTES[exp.model.dtype]
    if kind == "finetune":
        k = knobs or train_knobs(exp, exp.finetune, processes, cuda, micro)
        return training_need(stage, shapes.teacher, None, k, seq)
    if kind == "distill":
        k = knobs or train_knobs(exp, exp.distill_for(stage_student(stage)), processes, cuda, micro)
        return training_need(stage, shapes.students[stage_student(stage)], shapes.teacher, k, seq)
    if kind == "prune":
        p = exp.prune_by_name(stage_student(stage))
        student = shapes.students[p.name]
        resident = count_params(student) * (e if cuda else 4)
        return forward_need(stage, [shapes.teacher], p.calibration_batch_size * seq, cuda, e, resident)
    if kind == "eval":
        models = [shapes.teacher, *shapes.students.values()]
        return forward_need(stage, models, (exp.eval.micro_batch_size if exp.eval else 1) * seq, cuda, e)
    return None


# ---- disk ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiskNeed:
    stage: str
    model: int  # model/ (kept)
    checkpoint: int  # one checkpoint (0: the stage writes none)
    checkpoints_at_once: int  # kept + the one being written (0: none periodic; a cancel may write one)

    @property
    def peak(self) -> int:
        """While it runs: its checkpoints, then model/ written beside the last one."""
        if not self.checkpoints_at_once:
            return self.model
        return max(self.checkpoint * self.checkpoints_at_once, self.checkpoint + self.model)


def checkpoint_bytes(params: int, k: Knobs) -> int:
    """One checkpoint: the model's weights as held (bf16 with masters, else fp32), the optimizer's
    masters and moments (engine/training/checkpoint.py saves accelerate's state)."""
    weights = 2 * params if k.master else 4 * params
    return weights + (4 * params if k.master else 0) + k.state_bytes * params


def stage_disk(exp: Experiment, shapes: Shapes, stage: str, processes: int, cuda: bool) -> DiskNeed | None:
    kind = kind_of(stage)
    e = DTYPE_BYTES[exp.model.dtype]
    if kind.training:  # finetune trains the teacher, distill-<s> its student
        model = shapes.students[stage_student(stage)] if kind.per_student else shapes.teacher
        cfg = own_settings(exp, stage)
        n = count_params(model)
        k = train_knobs(exp, cfg, processes, cuda)
        keep = getattr(cfg, "keep_checkpoints", 1)
        periodic = cfg.steps > cfg.checkpoint_interval
        return DiskNeed(stage, n * e, checkpoint_bytes(n, k), keep + 1 if periodic else 0)
    if kind is PRUNE:
        return DiskNeed(stage, count_params(shapes.students[stage_student(stage)]) * e, 0, 0)
    return None


def predicted_need(exp: Experiment, stage: str, processes: int, cuda: bool, micro: int) -> Need | None:
    """What a running training stage predicts for itself (logged beside the measured peak); None when
    the shapes are not known from the config."""
    shapes = experiment_shapes(exp)
    return None if shapes is None else stage_need(exp, shapes, stage, processes, cuda, micro)
