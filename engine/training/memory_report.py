"""A training stage's memory: the config's prediction (engine/resources/) when it starts, and on CUDA the
allocator's peak beside it when it ends, in the log and in status.json ("memory")."""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.contract import GIB
from engine.contract.stage_context import StageContext


class MemoryReport:
    def __init__(self, ctx: StageContext, device: torch.device, log: Callable[[str], None]):
        self.ctx, self.device, self.log = ctx, device, log
        self._bytes: int | None = None  # the last prediction's total

    def predict(self, processes: int, micro_batch: int | None, why: str = "") -> None:
        """Predict (again: `why` says what changed, e.g. the micro-batch an "auto" search chose; a figure that
        did not change is not logged twice)."""
        from engine.resources.plan import predicted_need

        need = predicted_need(self.ctx.exp, self.ctx.stage, processes, self.device.type == "cuda", micro_batch)
        if need is not None and need.total != self._bytes:
            self._bytes = need.total
            self.log(f"memory: predicted{why} {need.describe()}")

    @property
    def predicted_gib(self) -> float | None:
        return None if self._bytes is None else round(self._bytes / GIB, 3)

    def measured(self, step: int | None, what: str = "") -> None:
        """The peak (the allocator's, since the stage began; `what` says how far) against the prediction."""
        if self.device.type != "cuda":
            return
        peak = torch.cuda.max_memory_allocated(self.device) / GIB
        pred = self.predicted_gib
        off = f" ({(pred - peak) / peak:+.1%} predicted {pred:.2f} GiB)" if pred else ""
        self.log(f"memory: peak{what} {peak:.2f} GiB allocated per GPU{off}")
        self.ctx.progress(step, memory={"peak_gib": round(peak, 3), "predicted_gib": pred})
