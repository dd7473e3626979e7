"""What a stage's status.json says about a cancel in progress, and how long a canceller may wait for it.

A training stage writes, besides the contract's fields:

    "phase": "saving" | null      # "saving" while it writes a checkpoint (never kill it then)
    "saving_step": 10             # the step that checkpoint holds
    "saving_what": "the model"    # absent: a checkpoint; "the model": the finished stage's model/
    "step_s": 1.9                 # measured seconds per optimizer step (recent mean)
    "val_s": 12.0                 # measured seconds of its last validation
    "checkpoint_s": 41.0          # measured seconds of its last checkpoint write
    "cancel": {"signal": "SIGTERM", "at": "..."}   # it got a stop request and is finishing

`slimlab-engine cancel` (engine/orchestration/cancel.py) reads them: it waits for a stage that is
saving however long that takes, and otherwise for about two steps plus one checkpoint write.
Torch-free (the TUI reads it).
"""

from __future__ import annotations

import math
from typing import Any

from engine.contract.files import parse_iso

SAVING = "saving"
CANCEL_SLACK_S = 10.0  # start-up of the save, the status write, the process's exit


def _seconds(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 else 0.0


def saving_step(doc: dict[str, Any] | None) -> int | None:
    """The step whose checkpoint the stage is writing now, or None."""
    if not doc or doc.get("phase") != SAVING:
        return None
    step = doc.get("saving_step")
    return step if isinstance(step, int) else doc.get("step") if isinstance(doc.get("step"), int) else 0


def saving_what(doc: dict[str, Any] | None) -> str:
    """What a stage that reports "saving" is writing: "checkpoint", or "the model" at the end of training."""
    what = (doc or {}).get("saving_what")
    return what if isinstance(what, str) and what else "checkpoint"


def cancel_grace(doc: dict[str, Any] | None, now: float | None = None) -> float:
    """Seconds a stop request needs from the stage's own measurements: the step running when it lands,
    the one queued behind it (the loop reads steps one behind), a validation it may be in, then a
    checkpoint write. A training stage that measured nothing yet is in its first step (model load,
    compile): as long again as it has run so far (`now`: epoch seconds). 0 for any other stage (it stops
    at once; the canceller's grace applies)."""
    doc = doc or {}
    step, save, val = (_seconds(doc.get(k)) for k in ("step_s", "checkpoint_s", "val_s"))
    if step or save or val:
        return 2 * step + val + 1.5 * save + CANCEL_SLACK_S
    started = parse_iso(doc.get("started_at"))
    if now is not None and started is not None and isinstance(doc.get("total_steps"), int):
        return max(0.0, now - started.timestamp()) + CANCEL_SLACK_S
    return 0.0


def cancel_note(doc: dict[str, Any] | None) -> str | None:
    """'cancelling: saving checkpoint at step N' (or 'finishing step N') for a stage that got a stop request."""
    if not doc or doc.get("state") != "running" or not isinstance(doc.get("cancel"), dict):
        return None
    saving = saving_step(doc)
    if saving is not None:
        return f"cancelling: saving {saving_what(doc)} at step {saving}"
    step = doc.get("step") if isinstance(doc.get("step"), int) else 0
    return f"cancelling: finishing step {step + 1}, then saving a checkpoint"
