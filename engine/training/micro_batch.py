"""`micro_batch_size = "auto"`: the largest micro-batch that fits, found by trying.

The micro-batch only splits an optimizer step: global_batch_size = micro_batch_size x accumulation
x processes, and the training windows are drawn by global batch (engine/training/loop.py), so the
size picked here changes neither the data order nor the update (up to the order of float sums).

The search tries micro-batches that divide global_batch_size / processes (so the global batch is
kept through gradient accumulation), largest first, halving after each out-of-memory error like
accelerate's `find_executable_batch_size`. A try (`Trainer.fits`) is one real forward and backward
of the student (and teacher) in eager mode with the optimizer state's memory held aside, before the
optimizer exists; it leaves weights, gradients and random state as they were. Where master weights
will apply (one process on CUDA) the try runs on bf16 copies of the parameters (`bf16_parameters`), as
training will once MasterAdamW has cast them: the fp32 parameters under autocast would try a larger
step than the one the stage runs.

Where no search runs, "auto" is `fixed_micro_batch` (engine/config/micro_batch.py): the largest divisor up to CPU_AUTO_MAX. That is
the size on the CPU, under FSDP with several processes (an out-of-memory error on one rank inside a
collective would hang the others), and the size validation batches take with "auto" (so students
that pick different sizes are validated on the same windows).

Fault injection, for tests: with SLIMLAB_AUTO_BATCH_FIT=N in the environment the search runs on the
CPU too, and a try above N samples raises torch.OutOfMemoryError as a device that fits N would.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from engine.config import TrainConfig
from engine.config.schema import STATE_BYTES
from engine.errors import UserError

FIT_ENV = "SLIMLAB_AUTO_BATCH_FIT"
# Bytes per trainable parameter a search holds aside for what the first optimizer step allocates:
# AdamW's two moments (STATE_BYTES by optimizer_states), plus the fp32 master copy (or the fp32 gradient
# sums) where master weights may apply.
MASTER_BYTES = 4


@contextmanager
def bf16_parameters(module: Any) -> Iterator[None]:
    """The fp32 parameters of `module` as bf16 copies for the block, then the very fp32 tensors again (the
    originals stay allocated beside the copies, as the fp32 masters will)."""
    import torch

    originals = {p: p.data for p in module.parameters() if p.dtype == torch.float32}
    try:
        for p, data in originals.items():
            p.data = data.to(torch.bfloat16)
        yield
    finally:
        for p, data in originals.items():
            p.data = data


def optimizer_reserve(states: str, master: bool | str, params: int, per: int) -> Callable[[int], int]:
    """Bytes a try of m samples holds aside for the optimizer: the moments, plus 4 a parameter where
    master weights apply (`master` true): the fp32 masters, or with "stochastic" (no masters) the fp32
    gradient sums, which only a step of several micro-batches (m < `per`, the per-process batch) needs."""
    moments = int(STATE_BYTES[states] * params)
    if master == "stochastic":
        return lambda m: moments + MASTER_BYTES * params * (m < per)
    return lambda m: moments + MASTER_BYTES * params * bool(master)


def per_process_batch(cfg: TrainConfig, world: int, section: str) -> int:
    """global_batch_size / processes; a UserError when it does not divide."""
    if cfg.global_batch_size % world:
        raise UserError(f"{section}.global_batch_size: {cfg.global_batch_size} is not a multiple of the "
                        f"{world} processes; change one of them")
    return cfg.global_batch_size // world


def candidates(per_process: int) -> list[int]:
    """The sizes the search tries, largest first: per_process, then the largest divisor of it up
    to half the last size tried, down to 1."""
    out = [per_process]
    while out[-1] > 1:
        half = out[-1] // 2
        out.append(max(d for d in range(1, half + 1) if per_process % d == 0))
    return out


def fault_limit() -> int | None:
    """SLIMLAB_AUTO_BATCH_FIT (tests): the most samples a try may hold; None when unset."""
    raw = os.environ.get(FIT_ENV)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"{FIT_ENV}={raw!r}: give a whole number of samples >= 1, or unset it")
    return int(raw)


def is_out_of_memory(e: BaseException) -> bool:
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(e, torch.OutOfMemoryError) or should_reduce_batch_size(e)


def release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def search_micro_batch(per_process: int, fits: Callable[[int], None], log: Callable[[str], None]) -> int:
    """The largest of `candidates(per_process)` for which `fits(size)` raises no out-of-memory error."""
    import torch

    limit = fault_limit()
    failed: list[int] = []
    for size in candidates(per_process):
        try:
            if limit is not None and size > limit:
                raise torch.OutOfMemoryError(f"{FIT_ENV}={limit}: a micro-batch of {size} does not fit")
            fits(size)
        except Exception as e:  # noqa: BLE001 (only out-of-memory errors are caught; see below)
            if not is_out_of_memory(e):
                raise
            failed.append(size)
        else:
            tried = f" ({', '.join(map(str, failed))} did not fit)" if failed else ""
            log(f"micro_batch_size auto: {size}{tried}")
            return size
        finally:
            release_memory()
    raise UserError("micro_batch_size auto: not even a micro-batch of 1 sequence fits in the device's memory; "
                    "shorten data.seq_length, set gradient_checkpointing = true, or use [launch] strategy = "
                    "\"fsdp\" on more GPUs")


def pick_micro_batch(cfg: TrainConfig, accelerator: Any, params: int, seq: int | None, master: bool | str,
                     fits: Callable[[int, int, bool], None], log: Callable[[str], None]) -> int:
    """cfg.micro_batch_size, or for "auto" the largest that fits, the same on every process. `params`: the
    trained parameters; `master`: the master_weights mode where master weights can apply, else False;
    `fits(size, reserve_bytes, as_bf16)`: one try (`Trainer.fits`)."""
    from engine.config.micro_batch import AUTO, fixed_micro_batch

    world = accelerator.num_processes
    if cfg.micro_batch_size != AUTO:
        return int(cfg.micro_batch_size)
    fsdp = accelerator.is_fsdp2 and world > 1
    if seq is None or not searches(accelerator.device.type, fsdp):
        size = fixed_micro_batch(cfg, world)
        why = "no seq_length given" if seq is None else "under FSDP" if fsdp else f"on {accelerator.device.type}"
        log(f"micro_batch_size auto: {size} (no search: {why})")
        return size
    per = cfg.global_batch_size // world
    # Where master weights will apply, the optimizer casts the parameters to bf16 only after this search:
    # try in bf16, as training runs (fp32 parameters under autocast keep an fp32 residual stream and a
    # bf16 copy of each weight: at SmolLM2's shape the stage peaked at 24.0 GiB in the try, 18.5 with this).
    # The fp32 originals stand for the masters' 4 bytes a parameter; a try of fewer than `per` samples
    # still holds aside the fp32 gradient sums accumulation adds (the reserve "stochastic" makes).
    as_bf16 = world == 1 and master is not False
    reserve = optimizer_reserve(cfg.optimizer_states, "stochastic" if as_bf16 else master, params, per)
    size = search_micro_batch(per, lambda m: fits(m, reserve(m), as_bf16), log)
    if world > 1:  # each process searched alone (no collectives): the smallest pick fits all
        import torch
        import torch.distributed as dist

        t = torch.tensor([size], device=accelerator.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        size = int(t.item())
    return size


def searches(device_type: str, fsdp_processes: bool) -> bool:
    """Whether "auto" searches here: on CUDA (or on any device under the fault injection), and not
    under FSDP with several processes."""
    if fsdp_processes:
        return False
    return device_type == "cuda" or fault_limit() is not None
