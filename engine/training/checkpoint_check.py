"""Is a checkpoint intact enough to load? Checked before loading, since a load that fails halfway has
already overwritten the model with part of it (a damaged latest checkpoint gave a SafetensorError
traceback on every rerun).

The check reads headers, not tensors: each safetensors file's header parses and the file is as long as
the header says; each torch file (optimizer.bin, random_states_N.pkl: zip archives) has its central
directory; trainer_state.json is a JSON object. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.models.weights_check import safetensors_problem, torch_file_problem

STATE_FILE = "trainer_state.json"
SET_ASIDE = "damaged-"  # a damaged checkpoint is renamed to damaged-step-NNNNNNNN (kept to look at, never loaded)


def checkpoint_problem(path: str | Path) -> str | None:
    """The first damaged file of checkpoint `path`, as one phrase naming it; None when it looks intact."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"{STATE_FILE}: unreadable ({e})"
    if not isinstance(state, dict):
        return f"{STATE_FILE}: not a JSON object"
    for f in sorted(path.rglob("*")):
        if f.suffix == ".safetensors":
            problem = safetensors_problem(f)
        elif f.suffix in (".bin", ".pkl", ".pt"):
            problem = torch_file_problem(f)
        else:
            continue
        if problem:
            return str(f.relative_to(path).parent / problem) if f.parent != path else problem
    return None
