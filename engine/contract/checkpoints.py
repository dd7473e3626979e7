"""The checkpoint listing of a stage: `<stage>/checkpoints/step-NNNNNNNN/`, complete once it holds
trainer_state.json (engine/training/checkpoint.py writes them). Torch-free: `status`, `cancel` and
the planner read it too."""

from __future__ import annotations

import re
from pathlib import Path

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"step-(\d{8})")


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
