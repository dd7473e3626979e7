"""`StageKind`: the record of one kind of stage. Each kind's module (prepare, training, prune, eval)
builds one; `engine.stages` lists them in pipeline order.

Torch-free, pydantic-free and free of engine.config/contract (it sits below both): an experiment
and a RunLayout are passed in, not imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StageKind:
    name: str
    body: str  # "module:function" of the stage body, a function of a StageContext
    output: str  # the file, relative to the stage directory, whose presence proves the stage finished
    processes: int | None  # processes when GPUs are present: None = every GPU of the stage (DDP/FSDP)
    section: str | None  # the experiment section holding its own settings (None: [model]/[data] only)
    optional: bool  # the stage exists only when its section is present ([finetune], [distill], [eval])
    per_student: bool  # one stage per [[prune]] student; its section's values are that student's
    inputs: tuple[str, ...]  # kinds it reads; a per-student input is the same student's; "*": every earlier kind
    kept_on_rerun: tuple[str, ...] = ()  # files a rerun leaves in place ("*": all; the stage judges them itself)
    group_body: str | None = None  # "module:function" running several of its stages over one shared input
    parallel: bool = False  # its stages may run at once on disjoint GPUs ([launch] parallel)
    val_curve: bool = False  # writes validation losses Compare can overlay
    train_loss: str = "train"  # what its train loss is called in charts
    may_search: bool = False  # may write search.json (a student with method = "search")
    # a per-student kind: the student's own settings of its section, e.g. `exp.distill_for(student)`
    student_settings: Callable[[Any, str], Any] | None = None
    # "module:name" of its memory, disk and host-load model (engine/resources/footprints.py); None: no model
    footprint: str | None = None

    @property
    def training(self) -> bool:
        """Trains a model: keeps its checkpoints across reruns and may span several machines."""
        return self.processes is None

    @property
    def multi_node(self) -> bool:
        return self.processes is None

    def stage(self, student: str | None = None) -> str:
        """The stage name: `<kind>`, or `<kind>-<student>` for a per-student kind."""
        if self.per_student != (student is not None):
            raise ValueError(f"{self.name}: {'a' if self.per_student else 'no'} student name expected")
        return f"{self.name}-{student}" if student is not None else self.name

    def student_of(self, stage: str) -> str | None:
        """`prune-width` -> `width` for this kind's stages; None for any other name."""
        kind, sep, student = stage.partition("-")
        return student if self.per_student and sep and kind == self.name and student else None

    def model_dir(self, layout: Any, student: str | None = None) -> Path:
        """Where the stage writes its model (`layout`: a RunLayout)."""
        return layout.model_dir(self.stage(student))

    def output_file(self, layout: Any, stage: str) -> Path:
        """The file whose presence proves `stage` finished."""
        return layout.stage_dir(stage) / self.output
