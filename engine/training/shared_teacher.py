"""Several students distilled in one process from one teacher forward per micro-batch.

A run with six students would run the teacher's forward six times over the same batches. Students
whose data streams are the same (data.seq_length and, in [distill], seed and global_batch_size) and
that take micro-batches of the same size (`sharing_conflicts`, engine/stages/training.py)
can share it: `launch_shared` runs the teacher once per micro-batch and feeds its outputs (last hidden state, mapped layers) to every student's fused loss,
then each student clips and updates on its own. Each student's step is the one `Trainer.launch`
would queue for it alone, so the results are those of separate runs.

The Trainers are built over one `Teacher` (`engine.training.step.shared_teacher`, capturing the
union of the students' mapped layers) on one device; students may differ in everything
else: loss, temperature, weights, lr and its schedule, hidden-state maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.training.pending_step import PendingStep
from engine.training.step import Trainer


def launch_shared(trainers: Sequence[Trainer], micro_batches: list[torch.Tensor], lrs: Sequence[float],
                  cancel: bool = False) -> list[PendingStep]:
    """One optimizer step of every trainer over the same micro-batches, the teacher's forward run
    once per micro-batch; queued without a host sync, like `Trainer.launch`."""
    if not trainers:
        return []
    teacher = trainers[0].teacher
    if teacher is None or any(t.teacher is not teacher for t in trainers):
        raise ValueError("launch_shared: every trainer must hold the same Teacher (step.shared_teacher)")
    if len(lrs) != len(trainers):
        raise ValueError(f"launch_shared: {len(lrs)} learning rates for {len(trainers)} trainers")
    n = len(micro_batches)
    for trainer, lr in zip(trainers, lrs, strict=True):
        trainer.begin(lr)
    for i, batch in enumerate(micro_batches):
        out = trainers[0].teacher_outputs(batch)
        for trainer in trainers:
            trainer.accumulate(batch, i, n, out)
        del out
    return [trainer.end(cancel) for trainer in trainers]
