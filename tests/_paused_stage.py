"""A real training stage (`python -m engine finetune FILE`) that stops dead at one phase of one checkpoint
write, for the test to SIGKILL it there.

    python _paused_stage.py GATES_DIR PHASE STEP finetune FILE

PHASE: "before" (the stage has reported saving, nothing is written yet), "during" (the model and
optimizer are in the hidden temp folder, trainer_state.json is not), "after" (renamed into place,
older checkpoints removed). At that point it creates GATES/paused and waits forever.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    gates, phase, at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])

    from engine import cli
    from engine.training import checkpoint, loop

    def pause() -> None:
        (gates / "paused").touch()
        while True:
            time.sleep(1)  # until the test kills it

    save, write_json = loop.save_checkpoint, checkpoint.write_json

    def paused_save(acc, root, step, *a, **kw):
        if step == at and phase == "before":
            pause()
        out = save(acc, root, step, *a, **kw)
        if step == at and phase == "after":
            pause()
        return out

    def paused_write_json(path, obj):
        if phase == "during" and Path(path).name == checkpoint.STATE_FILE and obj.get("step") == at:
            pause()
        return write_json(path, obj)

    loop.save_checkpoint = paused_save
    checkpoint.write_json = paused_write_json
    return cli.main(sys.argv[4:])


if __name__ == "__main__":
    sys.exit(main())
