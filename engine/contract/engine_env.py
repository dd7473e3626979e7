"""How an engine process finds the engine, as both of its starters need it: the orchestrator starting a
stage (`accelerate launch ... -m engine`) and the TUI starting `python -m engine run --detach`.
No torch import."""

from __future__ import annotations

import os
from pathlib import Path


def engine_pythonpath() -> str:
    """Our PYTHONPATH with this engine package's parent in front: `python -m engine` started from
    any directory imports the same engine as this process."""
    root = str(Path(__file__).resolve().parent.parent.parent)
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
