"""A real training stage (`python -m engine finetune FILE`) whose step and checkpoint write are as slow
as the test wants: each waits on a gate file the test creates, so nothing depends on the clock.

    python _slow_stage.py GATES_DIR finetune FILE

Step SLOW_STEP (env, default 3; 0: none) creates GATES/in-step, then waits for GATES/release-step. Every
checkpoint write, once the stage has reported "saving", creates GATES/in-save-<step>, then waits for
GATES/release-save. Writing the final model creates GATES/in-model, then waits for GATES/release-model.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _wait(gate: Path, here: Path) -> None:
    here.touch()
    while not gate.exists():
        time.sleep(0.01)  # polling a file: how fast the machine is does not matter


def main() -> int:
    gates = Path(sys.argv[1])
    slow = int(os.environ.get("SLOW_STEP", "3"))

    from engine import cli
    from engine.models import hf
    from engine.training import loop, step

    launch, save = step.Trainer.launch, loop.save_checkpoint
    calls = {"n": 0}

    def slow_launch(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == slow:
            _wait(gates / "release-step", gates / "in-step")
        return launch(self, *a, **kw)

    def slow_save(acc, root, at, *a, **kw):
        _wait(gates / "release-save", gates / f"in-save-{at}")
        return save(acc, root, at, *a, **kw)

    save_model = hf.save_model

    def slow_save_model(*a, **kw):
        _wait(gates / "release-model", gates / "in-model")
        return save_model(*a, **kw)

    step.Trainer.launch = slow_launch
    loop.save_checkpoint = slow_save
    hf.save_model = slow_save_model
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
