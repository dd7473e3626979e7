"""Whether a finished stage's output is still there: a deleted model folder (or only its weights) showed
"succeeded" in `status` and `compare`, and `run` skipped the stage as up to date. Torch-free."""

from __future__ import annotations

from engine.contract.layout import RunLayout


def missing_output(layout: RunLayout, stage: str) -> str | None:
    """What of `stage`'s output is gone ("model/config.json is gone", "model/ holds no weights"), or None."""
    from engine.stages import kind_of

    try:
        out = kind_of(stage).output_file(layout, stage)
    except Exception:  # noqa: BLE001  (a folder that is no stage of a known kind: nothing to say)
        return None
    if not out.exists():
        return f"{out.relative_to(layout.root)} is gone"
    if out.name == "config.json" and not any(p.suffix in (".safetensors", ".bin") for p in out.parent.iterdir()):
        return f"{out.parent.relative_to(layout.root)}/ holds no weights"
    return None
