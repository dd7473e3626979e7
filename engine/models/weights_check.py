"""Whether weight files are whole, from their framing alone (headers, not tensors): a truncated
safetensors file or a torch file without its zip directory is named before anything loads it. Used for
checkpoints (engine/training/checkpoint_check.py) and for the teacher's folder at `check`. Torch-free.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path


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
