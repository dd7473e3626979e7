"""What a training stage body builds for the training recipe (engine/training/loop.py): the models and the loss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from engine.distill.losses import LossSpec
from engine.distill.objective import HiddenSpec


@dataclass
class Models:
    """What a stage body builds for the recipe."""

    student: nn.Module
    teacher: nn.Module | None
    tokenizer: Any
    spec: LossSpec
    hidden: HiddenSpec | None
    save_dtype: str  # model/ is written in this dtype
    # teacher_logits = "cached": the teacher is not loaded up front (`teacher` None); where its stored logits
    # lack windows, engine/training/teacher_pass.py loads it from `teacher_path` with `load_teacher`
    teacher_path: str | None = None
    load_teacher: Callable[[], nn.Module] | None = None
