"""A training stage's curves: `<stage>/metrics.jsonl` (the run-directory contract) and TensorBoard
event files in `<stage>/tensorboard/` (skipped when tensorboard is not installed). Rank 0 writes;
on the other ranks every call is a no-op.
"""

from __future__ import annotations

import math
import shutil
from typing import Any

from engine.contract import append_metrics, truncate_metrics_after
from engine.contract.stage_context import StageContext


class MetricsLog:
    def __init__(self, ctx: StageContext):
        self.main = ctx.is_main
        self.path = ctx.layout.metrics_file(ctx.stage)
        self.tensorboard_dir = ctx.layout.tensorboard_dir(ctx.stage)
        self._log = ctx.log
        self.writer: Any = None

    def start(self, resumed_at: int | None) -> None:
        """Resuming at a step: drop the records logged after it (they come again). A fresh start:
        no curves of an earlier attempt."""
        if not self.main:
            return
        if resumed_at is not None:
            truncate_metrics_after(self.path, resumed_at)
        else:
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.tensorboard_dir, ignore_errors=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self._log("tensorboard is not installed: no event files (metrics.jsonl is still written)")
            return
        self.writer = SummaryWriter(str(self.tensorboard_dir))

    def write(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl line (`record` has "step" and "split"), and its numbers as scalars."""
        if not self.main:
            return
        append_metrics(self.path, record)
        if self.writer is None:
            return
        for k, v in record.items():
            if isinstance(v, (int, float)) and k not in ("step", "tokens") and math.isfinite(v):
                self.writer.add_scalar(f"{record['split']}/{k}", v, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
