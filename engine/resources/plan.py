"""Each stage's predicted memory and disk, from the experiment and the launch it will get: the footprint
the stage's kind names (engine/resources/footprints.py) applied to the run's shapes.

No torch: `check` and the TUI call this. Shapes come from engine.shapes.targets (the teacher's config,
the [[prune]] targets; a search student is sized by its largest candidate, and its training by that one or
the candidate with the most activations, whichever needs more).
"""

from __future__ import annotations

from engine.config import Experiment
from engine.resources.footprints import footprint_of
from engine.resources.inputs import DiskNeed, Shapes, checkpoint_bytes, experiment_shapes
from engine.resources.memory import Knobs, Need

__all__ = ["DiskNeed", "Shapes", "checkpoint_bytes", "experiment_shapes", "predicted_need", "stage_disk",
           "stage_need"]


def stage_need(exp: Experiment, shapes: Shapes, stage: str, processes: int, cuda: bool,
               micro: int | None = None, knobs: Knobs | None = None) -> Need | None:
    """The stage's peak per process on `processes` GPUs (or the CPU); None for a stage without a model."""
    return footprint_of(stage).need(exp, shapes, stage, processes, cuda, micro, knobs)


def stage_disk(exp: Experiment, shapes: Shapes, stage: str, processes: int, cuda: bool) -> DiskNeed | None:
    return footprint_of(stage).disk(exp, shapes, stage, processes, cuda)


def predicted_need(exp: Experiment, stage: str, processes: int, cuda: bool, micro: int) -> Need | None:
    """What a running training stage predicts for itself (logged beside the measured peak); None when
    the shapes are not known from the config."""
    shapes = experiment_shapes(exp)
    return None if shapes is None else stage_need(exp, shapes, stage, processes, cuda, micro)
