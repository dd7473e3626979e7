"""A launched optimizer step's statistics (engine/training/step.py `Trainer.launch`), read by the training
loop one step behind the GPU."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class StepResult:
    loss: float
    parts: list[float]  # kd, ce, hidden
    grad_norm: float
    finite: bool
    cancel: bool


class PendingStep:
    """The statistics of a launched step, copied to the host without stopping the GPU.

    `result()` waits only for this step's work (a CUDA event), so the loop can launch step
    i+1 before it reads step i: the GPU never idles on a host sync between steps.
    """

    def __init__(self, stats: torch.Tensor):
        self.event = None
        if stats.is_cuda:
            self.host = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)
            self.host.copy_(stats, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = stats

    def result(self) -> StepResult:
        if self.event is not None:
            self.event.synchronize()
        v = self.host.tolist()
        finite = all(math.isfinite(x) for x in v[:5])
        return StepResult(v[0], v[1:4], v[4], finite, v[5] > 0)
