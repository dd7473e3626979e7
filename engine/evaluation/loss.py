"""Validation loss: the one next-token loss measurement of the engine.

`evaluate_loss` is used by the training loop's validation, "loss after pruning" and the eval
stage; `lm_loss_sum` also by the LM-loss layer scores of engine.prune.importance.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.distill.losses import LossSpec, fused_linear_loss
from engine.distill.objective import base_model, output_weight
from engine.errors import UserError

_CE = LossSpec("ce", chunk_tokens=4096)


def batch_plan(samples: int, batches: int | None, micro_batch_size: int) -> tuple[int, int]:
    """(count, size) of the micro-batches read from a split of `samples` windows: at most
    `batches` (None: the whole split), at least one, none larger than the split."""
    available = max(1, samples // micro_batch_size)
    count = available if batches is None else min(batches, available)
    return count, min(micro_batch_size, samples)


def _batches(data: Any, batches: int | None, micro_batch_size: int) -> Iterable[Any]:
    """Micro-batches [B, seq+1] from a PackedDataset-like object or an iterable of batches."""
    if hasattr(data, "batches") and hasattr(data, "__len__"):
        count, micro = batch_plan(len(data), batches, micro_batch_size)
        it = data.batches(micro, start=0)
        return (next(it) for _ in range(count))
    if batches is None:
        return data
    return itertools.islice(data, batches)


@torch.no_grad()
def lm_loss_sum(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy (fp32) of `model` on ids [B, T] with labels [B, T].

    The one LM-loss computation (evaluation here, LM-loss layer scores in
    engine.prune.importance): chunked and fused with the output projection, so the fp32
    logits of the whole batch are never materialised.
    """
    h = base_model(model)(input_ids=ids, use_cache=False).last_hidden_state
    loss, _, _ = fused_linear_loss(h.flatten(0, 1), output_weight(model), labels.flatten(), _CE)
    return loss.float() * labels.numel()


@torch.no_grad()
def lm_loss_sums(model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
    """(sum of next-token losses, number of predicted tokens) for one batch of windows."""
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(batch) if not isinstance(batch, torch.Tensor) else batch)
    x = x.to(device=device, dtype=torch.long)
    if x.ndim == 1:
        x = x.unsqueeze(0)
    inputs, labels = x[:, :-1], x[:, 1:]
    return lm_loss_sum(model, inputs, labels), labels.numel()


@torch.no_grad()
def evaluate_loss(model: nn.Module, dataset_or_batches: Any, batches: int | None = None,
                  micro_batch_size: int = 4, reduce: bool = False) -> float:
    """Mean next-token loss of `model` over `batches` micro-batches (None: the whole split).

    `dataset_or_batches`: a PackedDataset (read from its first sample, so repeated calls
    see the same windows) or any iterable of [B, seq+1] token arrays/tensors.
    `reduce`: average over torch.distributed ranks (each passing its own shard).
    """
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    count = 0
    try:
        for batch in _batches(dataset_or_batches, batches, micro_batch_size):
            s, n = lm_loss_sums(model, batch)
            total += s.double()
            count += n
    finally:
        model.train(was_training)
    stats = torch.stack([total, torch.tensor(float(count), dtype=torch.float64, device=total.device)])
    if reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(stats)
    if stats[1] == 0:
        raise UserError("evaluation: no batches to evaluate (empty split?)")
    return float(stats[0] / stats[1])
