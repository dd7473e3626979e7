"""Teacher + importance + target shape -> the pruned student, in memory. The one place that does it:
the prune stage builds its student here, and a search builds each candidate here.

Depth first (which layers go: `drop_layers`, or `selection` over the layer scores), then width on
the kept layers (their own neuron/head scores; embedding channels by their whole-model score).
Nothing is written to the teacher: depth pruning shares its tensors, width pruning slices copies.

A search builds many students of one teacher: `SortedTeacher` sorts the teacher's channels by
importance once, in place, and cuts each student from views of its tensors (no copies).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any

from transformers import PreTrainedModel

from engine.config.shape import Shape, StudentShape, student_config
from engine.models.adapter import Arch, config_dict, rebuild
from engine.prune.depth import kept_layers, prune_depth, select_layers
from engine.prune.importance import Importance
from engine.prune.width import inverse, permute_width, prune_width, select_width, width_order, width_views


def layers_to_drop(imp: Importance | None, teacher: Shape, target: StudentShape) -> list[int]:
    """Teacher layer indices the student drops (ascending; empty when it keeps every layer)."""
    if target.drop_layers is not None:
        return sorted(target.drop_layers)
    if not target.num_drop:
        return []
    return select_layers(imp, teacher.num_layers, target.num_drop, target.selection or "block-influence")


def _width_changes(a: Shape, b: Shape) -> bool:
    return (a.hidden_size, a.intermediate_size, a.num_heads, a.num_kv_heads) != \
        (b.hidden_size, b.intermediate_size, b.num_heads, b.num_kv_heads)


def prune_student(model: PreTrainedModel, imp: Importance | None, target: StudentShape,
                  drop: list[int] | None = None) -> PreTrainedModel:
    """The student of `target` cut from `model` (the teacher, left unchanged).

    `drop`: the layers to drop when already chosen (else `layers_to_drop`).
    """
    teacher = Arch(model).shape
    drop = layers_to_drop(imp, teacher, target) if drop is None else drop
    student = prune_depth(model, drop) if drop else model
    if _width_changes(teacher, target.shape):
        if imp is None:
            raise ValueError("prune_student: width pruning needs importance scores")
        kept = [i for i in range(teacher.num_layers) if i not in set(drop)]
        layer_imp = imp.for_layers(kept) if drop else imp
        student = prune_width(student, select_width(layer_imp, replace(teacher, num_layers=len(kept)), target.shape),
                              target.shape)
    return student


class SortedTeacher:
    """The teacher with every width axis sorted by importance (engine.prune.width.width_order), in
    place, inside a `with` block; restored bit for bit on exit.

    Any target then keeps a prefix of every axis, so `student(target)` is built from views of the
    teacher's tensors (nothing copied, except the query heads when kept KV groups lose some of
    theirs): prune_student's student with its channels in another order, which computes the same
    function (up to float rounding). On a GPU, copying the kept channels and building two model
    objects per candidate cost a fifth of a search. The students share the teacher's storage:
    train a copy, and drop them before the block ends; and a model that shares some of its
    tensors from before (prune_student shares the unchanged ones) sees them sorted inside it.
    """

    def __init__(self, model: PreTrainedModel, imp: Importance):
        self.model, self.imp = model, imp
        self.shape = Arch(model).shape
        self.order = width_order(imp, self.shape)
        self.sorted = False

    def __enter__(self) -> SortedTeacher:
        permute_width(self.model, self.order)
        self.sorted = True
        return self

    def __exit__(self, *exc: Any) -> None:
        permute_width(self.model, inverse(self.order))
        self.sorted = False

    def student(self, target: StudentShape, drop: list[int] | None = None) -> PreTrainedModel:
        """The student of `target` (layers: `drop`, else `layers_to_drop`), made of views."""
        if not self.sorted:
            raise RuntimeError("SortedTeacher.student: only inside its `with` block (the teacher is sorted there)")
        drop = layers_to_drop(self.imp, self.shape, target) if drop is None else drop
        kept = [i for i in range(self.shape.num_layers) if i not in set(drop)]
        state = width_views(kept_layers(self.model.state_dict(), kept), self.shape, target.shape)
        with _no_init():  # the weights are assigned right after: skip initialising them (most of the build)
            return rebuild(self.model, student_config(config_dict(self.model), target.shape, kept_layers=kept), state)


def _no_init() -> AbstractContextManager[Any]:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # another transformers layout: the build initialises the meta weights, slower
        return nullcontext()
    return no_init_weights()
