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

import re
import shutil
from pathlib import Path
from typing import Any

from engine.config import Experiment
from engine.contract import read_json, write_json
from engine.errors import UserError
from engine.stage_kinds import stage_student

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"step-(\d{8})")

# Trainer keys that may change between a checkpoint and its resume (a run that diverged can be
# resumed with a lower lr); any other change of the stage's inputs starts the stage afresh.
RESUMABLE_CHANGES = ("steps", "lr", "min_lr", "warmup_steps", "grad_clip", "val_interval", "val_batches",
                     "checkpoint_interval", "log_interval", "max_nan_steps", "compile",
                     "gradient_checkpointing")


def resume_key(exp: Experiment, stage: str, section: str) -> str:
    """The stage's config hash with the resumable trainer keys neutralised (see RESUMABLE_CHANGES),
    in the `section` ([finetune] or [distill]) and in a student's own `[[prune]] distill = {...}`."""
    clone = exp.model_copy(deep=True)
    sec = getattr(clone, section)
    defaults = type(sec)()
    for key in RESUMABLE_CHANGES:
        object.__setattr__(sec, key, getattr(defaults, key))
    if section == "distill":
        student = clone.prune_by_name(stage_student(stage))
        kept = {k: v for k, v in (student.distill or {}).items() if k not in RESUMABLE_CHANGES}
        object.__setattr__(student, "distill", kept or None)  # {steps = 9} alone: as if absent
    return clone.stage_hash(stage)


def checkpoint_path(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _NAME.fullmatch(p.name)
        if m and (p / STATE_FILE).exists():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(root: str | Path) -> tuple[int, Path] | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(accelerator: Any, root: str | Path, step: int, state: dict[str, Any],
                    keep: Path | None = None) -> Path:
    """Collective: every process must call it. Returns the checkpoint directory. Older checkpoints are
    removed, except `keep` (the last one known to be good: engine/training/loop.py good_at)."""
    root = Path(root)
    final = checkpoint_path(root, step)
    tmp = root / f".step-{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / STATE_FILE, {**state, "step": step})
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for _, old in list_checkpoints(root)[:-1]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def checkpoint_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json ({} when unreadable)."""
    return read_json(Path(path) / STATE_FILE) or {}


def load_checkpoint(accelerator: Any, path: str | Path) -> dict[str, Any]:
    """Restore model/optimizer/RNG from `path` (collective); returns trainer_state.json."""
    accelerator.load_state(str(path))
    check_rng_restored(Path(path), accelerator.process_index)
    state = read_json(Path(path) / STATE_FILE)
    if state is None:
        raise RuntimeError(f"{path}: {STATE_FILE} is missing or unreadable")
    return state


def check_rng_restored(path: Path, process_index: int) -> None:
    """accelerate logs a failed RNG restore at INFO and goes on, which quietly breaks the promise that a
    resumed run draws the same data order and dropout: compare the torch RNG with the saved one."""
    import torch

    saved = path / f"random_states_{process_index}.pkl"  # accelerate's RNG_STATE_NAME
    try:
        ok = torch.equal(torch.load(saved, weights_only=False)["torch_manual_seed"], torch.get_rng_state())
    except Exception:  # missing, unreadable, or another layout: not restored either way
        ok = False
    if not ok:
        raise UserError(f"{path}: the random state of process {process_index} was not restored ({saved.name} "
                        "missing or unreadable), so the resumed run would not repeat its data order; resume "
                        f"with the processes it was saved with, or delete {path.parent} to start the stage afresh")


def remove_checkpoints(root: str | Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
