"""Writing packed token files: one flat `<split>.bin` per split plus `<split>.idx.npy`.

Everything is written into a private build directory and moved into place only when the
whole result is complete (`commit`), meta.json last: a reader that finds meta.json finds
finished files, and a failed or cancelled prepare leaves the previous result untouched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from engine.contract import write_json
from engine.data.dataset import META_FILE, SPLITS

BUILD_PREFIX = ".build-"


class SplitWriter:
    """Appends token batches to `<split>.bin`; keeps document lengths for the index.

    `cap` (data.max_tokens) cuts the stream at exactly that many tokens; once reached,
    `full` is set and later batches are ignored (the reader stops sending them).
    """

    def __init__(self, build_dir: Path, split: str, dtype: np.dtype, cap: int | None = None):
        self.split = split
        self.path = build_dir / f"{split}.bin"
        self.idx_path = build_dir / f"{split}.idx.npy"
        self.dtype = dtype
        self.cap = cap
        self.tokens = 0
        self.full = False
        self.truncated = False
        self._lengths: list[np.ndarray] = []
        self._f = open(self.path, "wb")

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> int:
        """Write one batch; returns the tokens actually written."""
        if self.full:
            return 0
        if self.cap is not None and self.tokens + len(flat) >= self.cap:
            keep = self.cap - self.tokens
            ends = np.cumsum(lengths)
            whole = int(np.searchsorted(ends, keep, side="right"))  # documents that fit entirely
            partial = keep - (int(ends[whole - 1]) if whole else 0)
            lengths = np.concatenate([lengths[:whole], [partial] if partial else []]).astype(np.int64)
            flat = flat[:keep]
            self.full = True
            self.truncated = bool(partial) or whole < len(ends)
        self._f.write(np.ascontiguousarray(flat, dtype=self.dtype).data)
        self._lengths.append(lengths)
        self.tokens += len(flat)
        return len(flat)

    @property
    def documents(self) -> int:
        return int(sum(len(x) for x in self._lengths))

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        with open(self.idx_path, "wb") as f:
            np.save(f, offsets)
            f.flush()
            os.fsync(f.fileno())

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()


def new_build_dir(data_dir: Path) -> Path:
    """A fresh private build directory; leftovers of crashed builds are removed first."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for old in data_dir.glob(f"{BUILD_PREFIX}*"):
        shutil.rmtree(old, ignore_errors=True)
    build = data_dir / f"{BUILD_PREFIX}{os.getpid()}"
    build.mkdir()
    return build


def commit(build: Path, data_dir: Path, splits: list[str], meta: dict[str, Any], tokenizer: bool) -> None:
    """Move a finished build into place; meta.json (the 'complete' marker) goes last."""
    (data_dir / META_FILE).unlink(missing_ok=True)
    for split in SPLITS:  # drop splits an older config produced and this one does not
        if split not in splits:
            (data_dir / f"{split}.bin").unlink(missing_ok=True)
            (data_dir / f"{split}.idx.npy").unlink(missing_ok=True)
    for split in splits:
        os.replace(build / f"{split}.bin", data_dir / f"{split}.bin")
        os.replace(build / f"{split}.idx.npy", data_dir / f"{split}.idx.npy")
    if tokenizer:
        target = data_dir / "tokenizer"
        if target.exists():
            target.rename(build / "tokenizer.old")
        os.replace(build / "tokenizer", target)
    write_json(data_dir / META_FILE, meta)
