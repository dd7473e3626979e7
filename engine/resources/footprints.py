"""What each kind of stage holds: its memory per process, its disk, the host memory to load its models.

A kind's record (engine/stages) names its footprint here ("engine.resources.footprints:TRAINING"), as
it names its body; engine/resources/plan.py looks it up. A new stage kind adds a Footprint here and
names it in its record. No torch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from engine.config import Experiment
from engine.config.shape import Shape, count_params
from engine.distill.topk_files import cache_bytes, stored_dtype
from engine.resources.inputs import DiskNeed, Shapes, checkpoint_bytes
from engine.resources.memory import Knobs, Need, forward_need, train_knobs, training_need
from engine.shapes.budget import DTYPE_BYTES
from engine.stages import DISTILL, kind_of, method_of, own_settings
from engine.stages.names import stage_student


class Footprint:
    """A stage that loads no model (prepare): nothing to predict."""

    def need(self, exp: Experiment, shapes: Shapes, stage: str, processes: int, cuda: bool,
             micro: int | None = None, knobs: Knobs | None = None) -> Need | None:
        return None

    def disk(self, exp: Experiment, shapes: Shapes, stage: str, processes: int, cuda: bool) -> DiskNeed | None:
        return None

    def host_load(self, exp: Experiment, shapes: Shapes, stage: str) -> tuple[int, str]:
        """Host bytes to load the stage's models before they go to the GPU, and what they are."""
        return 0, ""


class Training(Footprint):
    """finetune trains the teacher alone; distill-<s> trains student s from the teacher."""

    def _models(self, shapes: Shapes, stage: str) -> tuple[Shape, Shape | None]:
        if kind_of(stage).per_student:
            return shapes.students[stage_student(stage)], shapes.teacher
        return shapes.teacher, None

    def knobs(self, exp: Experiment, stage: str, processes: int, cuda: bool, micro: int | None = None) -> Knobs:
        return train_knobs(exp, own_settings(exp, stage), processes, cuda, micro)

    def need(self, exp: Experiment, shapes: Shapes, stage: str, processes: int, cuda: bool,
             micro: int | None = None, knobs: Knobs | None = None, live_teacher: bool = False) -> Need | None:
        """`live_teacher`: with the teacher on the device whatever teacher_logits says (a search's audit: the
        prune stage holds it)."""
        trained, teacher = self._models(shapes, stage)
        k = knobs or self.knobs(exp, stage, processes, cuda, micro)
        # a search student is any of its candidates: the largest, or the one with the most activations
        students = shapes.bounds(stage_student(stage)) if kind_of(stage).per_student else (trained,)
        seq = exp.data.seq_length
        if teacher is not None and _cached(exp, stage) and not live_teacher:
            # the teacher's pass first (the student waits on the host), then the student trains alone
            teacher_pass = forward_need(stage, [teacher], k.micro_batch * seq, cuda, k.model_bytes)
            top_k = own_settings(exp, stage).top_k
            train = max((training_need(stage, s, None, k, seq, top_k=top_k) for s in students), key=lambda n: n.total)
            return max(train, replace(teacher_pass, processes=k.processes), key=lambda n: n.total)
        return max((training_need(stage, s, teacher, k, seq) for s in students), key=lambda n: n.total)

    def disk(self, exp: Experiment, shapes: Shapes, stage: str, processes: int, cuda: bool) -> DiskNeed | None:
        cfg = own_settings(exp, stage)
        n = count_params(self._models(shapes, stage)[0])
        periodic = cfg.steps > cfg.checkpoint_interval  # else only a cancel writes one
        cache = 0
        if kind_of(stage).per_student and _cached(exp, stage):  # every window of the stage, on all ranks
            windows = cfg.steps * cfg.global_batch_size
            dtype = stored_dtype(exp.launch.mixed_precision, exp.model.dtype, cuda)
            cache = cache_bytes(windows, exp.data.seq_length, cfg.top_k, DTYPE_BYTES[dtype])
        return DiskNeed(stage, n * DTYPE_BYTES[exp.model.dtype],
                        checkpoint_bytes(n, self.knobs(exp, stage, processes, cuda)),
                        cfg.keep_checkpoints + 1 if periodic else 0, cache)

    def host_load(self, exp: Experiment, shapes: Shapes, stage: str) -> tuple[int, str]:
        # the trained model is read (or, from scratch, built) in fp32: its masters come from it
        trained, teacher = self._models(shapes, stage)
        n = 4 * count_params(trained)
        if teacher is not None:
            n = max(n, DTYPE_BYTES[exp.model.dtype] * count_params(teacher))
        return n, f"{stage}: the {'student' if teacher is not None else 'teacher'} in fp32"


def _cached(exp: Experiment, stage: str) -> bool:
    """A distill stage that reads the teacher's stored top-k ([distill] teacher_logits = "cached")."""
    return getattr(own_settings(exp, stage), "teacher_logits", "live") == "cached"


def trains_with(exp: Experiment, stage: str) -> str | None:
    """The distill stage whose recipe prune stage `stage` trains candidates with, in its own process (a search's
    distill score or audit); None for any other stage."""
    if footprint_of(stage) is not PRUNE:
        return None
    p = own_settings(exp, stage)
    return DISTILL.stage(p.name) if method_of(p.method).searches and (p.audit or p.distill_scored) else None


class Prune(Footprint):
    """Calibration forwards of the teacher, the student built beside it."""

    def need(self, exp: Experiment, shapes: Shapes, stage: str, processes: int, cuda: bool,
             micro: int | None = None, knobs: Knobs | None = None) -> Need | None:
        p = own_settings(exp, stage)
        e = DTYPE_BYTES[exp.model.dtype]
        method = method_of(p.method)
        resident = 0 if method.shares_teacher_weights else count_params(shapes.students[p.name]) * (e if cuda else 4)
        need = forward_need(stage, [shapes.teacher], p.calibration_batch_size * exp.data.seq_length, cuda, e,
                            resident)
        # a distill score and the audit train candidates here, one process, with the [distill] recipe (`micro`: its
        # micro-batch; None: the config's, and for "auto" the least, as for a distill stage)
        if (via := trains_with(exp, stage)) is not None:
            train = TRAINING.need(exp, shapes, via, 1, cuda, micro, live_teacher=True)
            need = max(need, replace(train, stage=stage, knobs=None), key=lambda n: n.total)  # (knobs: a training stage's)
        return need

    def disk(self, exp: Experiment, shapes: Shapes, stage: str, processes: int, cuda: bool) -> DiskNeed | None:
        return DiskNeed(stage, count_params(shapes.students[stage_student(stage)]) * DTYPE_BYTES[exp.model.dtype],
                        0, 0)

    def host_load(self, exp: Experiment, shapes: Shapes, stage: str) -> tuple[int, str]:
        return DTYPE_BYTES[exp.model.dtype] * count_params(shapes.teacher), f"{stage}: the teacher"


class Eval(Footprint):
    """Every model of the run in turn; for the speed pass all of them are kept (on the GPU when they fit
    there, else on the host, each moved to the GPU for its turn: engine/evaluation/stage_body.py)."""

    def _models(self, shapes: Shapes) -> list[Shape]:
        # the teacher, and each student pruned and distilled
        return [shapes.teacher, *shapes.students.values(), *shapes.students.values()]

    def need(self, exp: Experiment, shapes: Shapes, stage: str, processes: int, cuda: bool,
             micro: int | None = None, knobs: Knobs | None = None) -> Need | None:
        tokens = (exp.eval.micro_batch_size if exp.eval else 1) * exp.data.seq_length
        return forward_need(stage, self._models(shapes), tokens, cuda, DTYPE_BYTES[exp.model.dtype])

    def host_load(self, exp: Experiment, shapes: Shapes, stage: str) -> tuple[int, str]:
        n = DTYPE_BYTES[exp.model.dtype] * sum(count_params(s) for s in self._models(shapes))
        return n, f"{stage}: every model of the run, kept for the speed pass"


NONE = Footprint()
TRAINING = Training()
PRUNE = Prune()
EVAL = Eval()


def footprint_of(stage: str) -> Any:
    """The Footprint the stage's kind names (NONE when it names none)."""
    import importlib

    ref = kind_of(stage).footprint
    if ref is None:
        return NONE
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)
