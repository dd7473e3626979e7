"""A full disk, said in one line: checked before a big write (checkpoints, model/), and turned into the same
line when a write runs out of space anyway (ENOSPC), after the partial write is removed."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterable
from pathlib import Path

from engine.errors import UserError

MARGIN = 1.05  # estimates of a write are raised by 5% and ...
SLACK = 256 << 10  # ... 256 KiB (metadata, JSON, RNG states)
# how ENOSPC reads when a library reports it without the OSError: safetensors, torch.save's zip writer
_FULL_MESSAGES = ("No space left on device", "os error 28", "Disk quota exceeded", "unexpected pos")


class DiskFull(UserError):
    """Not enough space for a write; nothing half-written stays behind."""


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def free_bytes(folder: str | Path) -> int:
    """Free space where `folder` is (its nearest existing parent)."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


RESUMES = "it resumes from the last checkpoint"


def disk_full(folder: str | Path, what: str, need: int, then: str = RESUMES) -> DiskFull:
    """The one line: which folder, what it was for, how much it needs and how much is free; `then`: what a
    rerun does (a fresh stage has no checkpoint to resume from: the line must not promise one)."""
    return DiskFull(f"no space left in {folder}: {what} needs about {human(need)}, {human(free_bytes(folder))} "
                    f"free; free some space there (or move runs_dir), then run again: {then}")


def ensure_free(folder: str | Path, what: str, estimate: int, then: str = RESUMES) -> None:
    """Raise DiskFull before writing `what` (about `estimate` bytes) into `folder` if it cannot fit."""
    need = int(estimate * MARGIN) + SLACK
    if free_bytes(folder) < need:
        raise disk_full(folder, what, need, then)


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC (or a quota), also when a library wrapped it in a RuntimeError (torch's 'unexpected pos')."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if any(m in str(e) for m in _FULL_MESSAGES):
        return True
    cause = e.__cause__ or e.__context__
    return cause is not None and cause is not e and is_disk_full(cause)


def tensor_bytes(tensors: Iterable[object]) -> int:
    """Bytes of the distinct tensors among `tensors` (tied weights once; shards: this process's part)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t  # an FSDP2 DTensor's shard
        key = (local.data_ptr(), local.numel()) if hasattr(local, "data_ptr") else None
        if key is None or key in seen:
            continue
        seen.add(key)
        total += local.numel() * local.element_size()
    return total
