"""`micro_batch_size = "auto"` where no search runs: the size the config alone gives. Torch-free.

"auto" without a search (engine/training/micro_batch.py searches on a GPU) is the largest divisor of
global_batch_size / processes up to CPU_AUTO_MAX: the size on the CPU, under FSDP with several
processes, and the size validation batches take (so students that pick different sizes are validated
on the same windows). The memory planner (engine/resources) predicts with it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.config.schema import TrainConfig

AUTO = "auto"
CPU_AUTO_MAX = 4  # "auto" without a search: the largest divisor of the per-process batch up to this


def fixed_micro_batch(cfg: TrainConfig, world: int = 1) -> int:
    """The micro-batch without a search: the configured size, or for "auto" the largest divisor of
    global_batch_size / processes up to CPU_AUTO_MAX."""
    if cfg.micro_batch_size != AUTO:
        return int(cfg.micro_batch_size)
    per = max(1, cfg.global_batch_size // max(1, world))
    return max(d for d in range(1, min(per, CPU_AUTO_MAX) + 1) if per % d == 0)
