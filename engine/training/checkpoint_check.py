"""Is a checkpoint intact enough to load? Checked before loading, since a load that fails halfway has
already overwritten the model with part of it (a damaged latest checkpoint gave a SafetensorError
traceback on every rerun).

The check reads headers, not tensors: each safetensors file's header parses and the file is as long as
the header says; each torch file (optimizer.bin, random_states_N.pkl: zip archives) has its central
directory; trainer_state.json is a JSON object. Torch-free.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

STATE_FILE = "trainer_state.json"
SET_ASIDE = "damaged-"  # a damaged checkpoint is renamed to damaged-step-NNNNNNNN (kept to look at, never loaded)


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's framing, or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name}: {size} bytes, shorter than a safetensors header"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{path.name}: its header claims {n} bytes, the file has {size}"
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        return f"{path.name}: unreadable header ({e})"
    want = 8 + n + max(ends, default=0)
    if size != want:
        return f"{path.name}: {size} bytes where its header says {want} (truncated or padded)"
    return None


def torch_file_problem(path: Path) -> str | None:
    """A torch.save file (a zip archive) whose central directory cannot be read, or None."""
    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (OSError, zipfile.BadZipFile) as e:
        return f"{path.name}: not a readable torch file ({e})"
    return None


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
