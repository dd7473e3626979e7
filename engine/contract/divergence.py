"""A training stage that "succeeded" while its validation loss blew up: the warning `run` logs and
records in status.json, and `status` shows. At lr 1.0 validation loss went 10.4 -> 45.4 without a word.
Read from metrics.jsonl, so it needs no torch and judges any finished or running stage alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.contract.metrics_reader import read_records

# Well above the best: half as much again, and by more than noise on a small validation set.
RATIO = 1.5
MARGIN = 0.5  # nats


def stage_divergence(metrics_file: str | Path) -> str | None:
    """divergence() of a stage's metrics.jsonl, read through the contract's reader (lines that do not
    count are skipped; only validation records are kept, so a long run's file is never held whole)."""
    return divergence(read_records(metrics_file))


def divergence(records: Iterable[dict[str, Any]]) -> str | None:
    """One line when the last validation loss is well above the best one (or not a number), else None."""
    val = [r for r in records if r.get("split") == "val" and "loss" in r]
    if len(val) < 2:
        return None
    last = val[-1]
    losses = [r["loss"] for r in val if isinstance(r["loss"], (int, float)) and math.isfinite(r["loss"])]
    if not losses:
        return None
    best = min(losses)
    best_step = next(r.get("step") for r in val if r["loss"] == best)
    loss = last["loss"]
    if isinstance(loss, (int, float)) and math.isfinite(loss) and not (loss > best * RATIO and loss > best + MARGIN):
        return None
    shown = f"{loss:.3g}" if isinstance(loss, (int, float)) else "not a number"
    return (f"validation loss {shown} at step {last.get('step')} is well above its best {best:.3g} "
            f"(step {best_step}): the training may have diverged; lower the lr or warmup, or rerun from a "
            "checkpoint before it")
