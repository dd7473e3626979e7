"""Teacher + importance + target shape -> the pruned student, in memory. The one place that does it:
the prune stage builds its student here, and a search builds each candidate here.

Depth first (which layers go: `drop_layers`, or `selection` over the layer scores), then width on
the kept layers (their own neuron/head scores; embedding channels by their whole-model score).
Nothing is written to the teacher: depth pruning shares its tensors, width pruning slices copies.
"""

from __future__ import annotations

from dataclasses import replace

from transformers import PreTrainedModel

from engine.models.adapter import Arch
from engine.prune.depth import prune_depth, select_layers
from engine.prune.importance import Importance
from engine.prune.width import prune_width, select_width
from engine.shapes.shape import Shape, StudentShape


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
