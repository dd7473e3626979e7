"""The micro-batches the training loop feeds: packed windows stacked and queued onto the device."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from engine.config import TrainConfig
from engine.config.micro_batch import fixed_micro_batch
from engine.errors import UserError


def device_batches(it: Iterator[Any], count: int, micro: int, device: torch.device) -> list[torch.Tensor]:
    """`count` micro-batches of `micro` windows each from `it`, on `device`."""
    import numpy as np

    out = []
    for _ in range(count):
        batch = torch.from_numpy(np.stack([next(it) for _ in range(micro)]))
        if device.type == "cuda":  # pinned, so the copy is queued without waiting for the GPU
            batch = batch.pin_memory()
        out.append(batch.to(device, non_blocking=True))
    return out


def validation_batches(data_dir: Path, seq: int, cfg: TrainConfig, rank: int, world: int,
                       device: torch.device, log: Callable[[str], None],
                       split: str = "validation") -> list[torch.Tensor]:
    """The same `val_batches` micro-batches every time (this rank's shard of `split`), of
    the configured micro-batch size (for "auto": `fixed_micro_batch`, whatever the search picks, so
    every student validates on the same windows); none, with a log line, when the split is not prepared."""
    from engine.data import PackedDataset
    from engine.evaluation.loss import batch_plan

    try:
        ds = PackedDataset(data_dir, split, seq, seed=0, rank=rank, world_size=world)
    except UserError as e:
        log(f"no {split}: {e}")
        return []
    count, micro = batch_plan(len(ds), cfg.val_batches, fixed_micro_batch(cfg, world))
    return device_batches(iter(ds), count, micro, device)
