"""Resumable training state in `<stage>/checkpoints/step-NNNNNNNN/`, written atomically.

A checkpoint is written into a hidden temp directory by every process (accelerate's
`save_state`: model, optimizer, RNG states of each process; sharded under FSDP), then
rank 0 adds `trainer_state.json` (step, data position, counters) and renames the
directory into place. A directory without `trainer_state.json` is never read, so a run
killed mid-save resumes from the previous checkpoint.

`trainer_state.json` also holds the stage's `resume_key`: a checkpoint is resumed only by a
run whose settings differ from its own in RESUMABLE_CHANGES at most.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.config import Experiment
from engine.contract import read_json, write_json
from engine.contract.checkpoints import STATE_FILE, checkpoint_path, list_checkpoints
from engine.disk_space import MARGIN, SLACK, DiskFull, disk_full, ensure_free, is_disk_full, tensor_bytes
from engine.errors import UserError
from engine.stages import kind_of, stage_student

# Trainer keys that may change between a checkpoint and its resume (a run that diverged can be
# resumed with a lower lr); any other change of the stage's inputs starts the stage afresh.
# optimizer_states: the moments are converted on load (engine/training/master_adamw.py load_state_dict).
RESUMABLE_CHANGES = ("steps", "lr", "min_lr", "warmup_steps", "grad_clip", "val_interval", "val_batches",
                     "checkpoint_interval", "log_interval", "max_nan_steps", "compile",
                     "gradient_checkpointing", "kernels", "optimizer_states", "keep_checkpoints")
# Values of a trainer key that resume one another: master_weights true <-> "stochastic" (MasterAdamW.load_state_dict
# rounds saved masters into the bf16 weights, or takes the saved bf16 weights as masters). Not false: fp32
# weights saved by such a run would be rounded into bf16 masters.
RESUMABLE_VALUES = {"master_weights": {"stochastic": True}}


def resume_key(exp: Experiment, stage: str) -> str:
    """The stage's config hash with the resumable trainer keys neutralised (see RESUMABLE_CHANGES),
    in the stage kind's own section ([finetune] or [distill]) and, for a per-student kind, in the
    student's overrides of it (`[[prune]] distill = {...}`)."""
    kind = kind_of(stage)
    section = str(kind.section)
    clone = exp.model_copy(deep=True)
    sec = getattr(clone, section)
    defaults = type(sec)()
    for key in RESUMABLE_CHANGES:
        object.__setattr__(sec, key, getattr(defaults, key))
    for key in RESUMABLE_VALUES:
        object.__setattr__(sec, key, _resumable_value(key, getattr(sec, key)))
    if kind.per_student:
        student = clone.prune_by_name(stage_student(stage))
        kept = {k: _resumable_value(k, v) for k, v in (getattr(student, section) or {}).items()
                if k not in RESUMABLE_CHANGES}
        # an override that now equals the section's value (true over true) is as if absent
        kept = {k: v for k, v in kept.items() if k not in RESUMABLE_VALUES or v != getattr(sec, k)}
        object.__setattr__(student, section, kept or None)  # {steps = 9} alone: as if absent
    return clone.stage_hash(stage)


def _resumable_value(key: str, value: Any) -> Any:
    """The value that stands for `value` in the resume key (RESUMABLE_VALUES)."""
    return RESUMABLE_VALUES.get(key, {}).get(value, value) if isinstance(value, str) else value


def save_checkpoint(accelerator: Any, root: str | Path, step: int, state: dict[str, Any],
                    keep: Path | None = None, keep_last: int = 1, not_written: Sequence[Any] = ()) -> Path:
    """Collective: every process must call it. Returns the checkpoint directory. Checkpoints older than
    the newest `keep_last` are removed, except `keep` (the last one known to be good: engine/training/loop.py
    good_at).

    Free space is checked first (the estimate: this process's model and optimizer tensors, less `not_written`); a write
    that runs out of space anyway removes its partial directory. Either way every process raises
    DiskFull (one line: the folder, the space needed) and the previous checkpoint stays."""
    root = Path(root)
    final = checkpoint_path(root, step)
    tmp = root / f".step-{step:08d}.tmp"
    need = checkpoint_bytes(accelerator, not_written)
    what = f"the checkpoint of step {step}"
    error: BaseException | None = None
    if accelerator.is_main_process:
        for stale in root.glob(".step-*.tmp"):  # a save killed midway: its space is needed now
            shutil.rmtree(stale, ignore_errors=True)
    try:
        ensure_free(root, what, need, _after_full(root))
        if accelerator.is_main_process:
            tmp.mkdir(parents=True)
    except (OSError, DiskFull) as e:
        error = e
    _agree(accelerator, error, root, what, need, tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        if accelerator.is_main_process:
            write_json(tmp / STATE_FILE, {**state, "step": step})
    except Exception as e:  # noqa: BLE001  (every process must reach _agree, or the others wait forever)
        error = e
    _agree(accelerator, error, root, what, need, tmp)
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for _, old in list_checkpoints(root)[:-keep_last]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _after_full(root: Path) -> str:
    """What a rerun does after the disk filled up: resume from the checkpoint there, if there is one."""
    found = list_checkpoints(root)
    if found:
        return f"it resumes from the checkpoint of step {found[-1][0]}"
    return "no checkpoint was written yet, so the stage starts again from step 0"


def checkpoint_bytes(accelerator: Any, not_written: Sequence[Any] = ()) -> int:
    """About what this process's part of a checkpoint takes: its models' and optimizers' tensors, less
    `not_written` (the weights a save hook leaves to the fp32 masters: Trainer.not_in_checkpoint)."""
    skip = {id(t) for t in not_written}
    tensors: list[Any] = []
    for model in accelerator._models:
        tensors += [t for t in (*model.parameters(), *model.buffers()) if id(t) not in skip]
    for opt in accelerator._optimizers:
        inner = opt
        while hasattr(inner, "optimizer"):
            inner = inner.optimizer
        tensors += [v for st in inner.state.values() for v in st.values() if hasattr(v, "numel")]
    return tensor_bytes(tensors)


def _agree(accelerator: Any, error: BaseException | None, root: Path, what: str, need: int, tmp: Path) -> None:
    """Collective: when any process failed, the partial write goes and every process raises (a disk
    that filled up as DiskFull); otherwise nothing."""
    failed = error is not None
    if accelerator.num_processes > 1:
        import torch

        flag = torch.tensor([1.0 if failed else 0.0], device=accelerator.device)
        torch.distributed.all_reduce(flag)
        failed = bool(flag.item())
    if not failed:
        return
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    if error is None:
        raise UserError(f"{root}: {what} failed on another process (its log says why)")
    if isinstance(error, DiskFull):
        raise error
    if is_disk_full(error):
        raise disk_full(root, what, int(need * MARGIN) + SLACK, _after_full(root)) from None
    raise error


def checkpoint_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json ({} when unreadable)."""
    return read_json(Path(path) / STATE_FILE) or {}


def load_checkpoint(accelerator: Any, path: str | Path) -> dict[str, Any]:
    """Restore model/optimizer/RNG from `path` (collective); returns trainer_state.json. (A checkpoint
    written with master weights holds no copy of the trained weights: engine/training/step.py's hooks.)"""
    accelerator.load_state(str(path))
    check_rng_restored(Path(path), accelerator.process_index)
    state = read_json(Path(path) / STATE_FILE)
    if state is None:
        raise RuntimeError(f"{path}: {STATE_FILE} is missing or unreadable")
    return state


MASTERS_ONLY = "weights_in_masters.json"  # marks a checkpoint whose trained weights live in the optimizer


def check_rng_restored(path: Path, process_index: int) -> None:
    """accelerate logs a failed RNG restore at INFO and goes on, which quietly breaks the promise that a
    resumed run draws the same data order and dropout: compare the torch RNG with the saved one."""
    import torch
    from accelerate.utils import load as load_allowlisted

    saved = path / f"random_states_{process_index}.pkl"  # accelerate's RNG_STATE_NAME
    try:
        # weights_only with accelerate's allowlist (numpy's RNG arrays), as accelerate reads it: a pickle
        # planted in a checkpoint cannot run code on resume (an unrestricted unpickler would run it)
        ok = torch.equal(load_allowlisted(saved)["torch_manual_seed"], torch.get_rng_state())
    except Exception:  # missing, unreadable, not a plain RNG state, or another layout: not restored either way
        ok = False
    if not ok:
        raise UserError(f"{path}: the random state of process {process_index} was not restored ({saved.name} "
                        "missing, unreadable or not a plain RNG state), so the resumed run would not repeat its "
                        f"data order; resume with the processes it was saved with, or delete {path.parent} to "
                        "start the stage afresh")


def remove_checkpoints(root: str | Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
