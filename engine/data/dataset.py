"""Reading packed token files: `read_meta` and `PackedDataset` (numpy only, no torch).

A split is one flat token stream (`<split>.bin`). Sample windows are `seq_length + 1` tokens
long and start every `seq_length` tokens, so inputs/targets of consecutive windows tile the
stream and every target token is seen exactly once per epoch. The order of windows is a
seeded permutation per epoch; ranks take disjoint strided slices of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import UserError
from engine.stages import PREPARE

META_FILE = PREPARE.output  # meta.json: its presence proves prepare finished
SPLITS = ("train", "validation", "test")


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    """meta.json of a prepared data directory; a UserError when prepare has not run."""
    path = Path(data_dir) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{data_dir}: no prepared data (meta.json missing); "
                        "run `slimlab-engine prepare FILE` first") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); run `slimlab-engine prepare FILE` again") from None
    if not isinstance(meta, dict) or "splits" not in meta:
        raise UserError(f"{path}: not a slimlab meta.json; run `slimlab-engine prepare FILE` again")
    return meta


def short_split_file(data_dir: str | Path, meta: dict[str, Any]) -> tuple[Path, int] | None:
    """(path, expected bytes) of the first `<split>.bin` that is missing, not as long as meta.json
    says, or without its `<split>.idx.npy`; None when every split's files are whole."""
    folder = Path(data_dir)
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split, info in meta.get("splits", {}).items():
        b = folder / f"{split}.bin"
        want = int(info["tokens"]) * itemsize
        if not b.exists() or b.stat().st_size != want or not (folder / f"{split}.idx.npy").exists():
            return b, want
    return None


def split_tokens(data_dir: str | Path, split: str, meta: dict[str, Any] | None = None) -> np.memmap:
    """The whole token stream of a split as a read-only memmap."""
    meta = meta or read_meta(data_dir)
    if split not in meta["splits"]:
        have = ", ".join(meta["splits"]) or "none"
        raise UserError(f"{data_dir}: no '{split}' split was prepared (have: {have}); "
                        f"give data.{split}_files or set data.{split}_fraction")
    path = Path(data_dir) / f"{split}.bin"
    n = int(meta["splits"][split]["tokens"])
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r", shape=(n,))


def split_documents(data_dir: str | Path, split: str) -> np.ndarray:
    """Document boundaries: offsets[i]:offsets[i+1] is document i (its EOS included)."""
    return np.load(Path(data_dir) / f"{split}.idx.npy")


class PackedDataset:
    """Windows of `seq_length + 1` tokens (numpy int64), shuffled per epoch, sharded by rank.

    Sample `k` of this rank (k counts over epochs: epoch = k // len(self)) is window
    `perm_epoch[(k % len) * world_size + rank]` where `perm_epoch` is a permutation of all
    windows seeded by (seed, epoch). Ranks get disjoint windows; the last
    `num_windows % world_size` windows of each epoch's permutation are skipped so every rank
    has the same number of samples. Iteration starts at sample `start` (resume) and never ends.
    """

    def __init__(self, data_dir: str | Path, split: str, seq_length: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, start: int = 0):
        if seq_length < 1:
            raise ValueError("seq_length must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if start < 0:
            raise ValueError("start must be >= 0")
        self.data_dir = Path(data_dir)
        self.split = split
        self.seq_length = int(seq_length)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.start = int(start)
        self.meta = read_meta(self.data_dir)
        self.num_tokens = int(self.split_info["tokens"])
        self.num_windows = max(0, (self.num_tokens - 1) // self.seq_length)
        if self.num_windows < self.world_size:
            raise UserError(
                f"{self.data_dir}: the {split} split has {self.num_tokens:,} tokens, too few for "
                f"{self.world_size} process(es) x windows of seq_length + 1 = {self.seq_length + 1}; "
                "lower data.seq_length or add data")
        self._tokens: np.memmap | None = None  # opened lazily (keeps the object picklable)
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    @property
    def split_info(self) -> dict[str, Any]:
        if self.split not in self.meta["splits"]:
            split_tokens(self.data_dir, self.split, self.meta)  # raises the UserError
        return self.meta["splits"][self.split]

    @property
    def tokens(self) -> np.memmap:
        if self._tokens is None:
            self._tokens = split_tokens(self.data_dir, self.split, self.meta)
        return self._tokens

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokens": None, "_perm": None, "_perm_epoch": -1}

    def __len__(self) -> int:
        """Samples per rank per epoch."""
        return self.num_windows // self.world_size

    def window(self, i: int) -> np.ndarray:
        """Window `i` of the stream (unshuffled): tokens[i*L : i*L + L + 1] as int64."""
        if not 0 <= i < self.num_windows:
            raise IndexError(f"window {i} out of range [0, {self.num_windows})")
        lo = i * self.seq_length
        return np.asarray(self.tokens[lo:lo + self.seq_length + 1], dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        """The window order of one epoch (the same on every rank)."""
        if epoch != self._perm_epoch or self._perm is None:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
            self._perm_epoch = epoch
        return self._perm

    def window_index(self, k: int) -> int:
        """The window that is sample `k` of this rank (k counted over epochs)."""
        if k < 0:
            raise IndexError("sample index must be >= 0")
        epoch, j = divmod(k, len(self))
        return int(self.permutation(epoch)[j * self.world_size + self.rank])

    def __getitem__(self, k: int) -> np.ndarray:
        return self.window(self.window_index(k))

    def __iter__(self) -> Iterator[np.ndarray]:
        k = self.start
        while True:
            yield self[k]
            k += 1

    def batches(self, batch_size: int, start: int | None = None) -> Iterator[np.ndarray]:
        """Stacked samples [batch_size, seq_length + 1], forever, from sample `start`."""
        k = self.start if start is None else start
        while True:
            yield np.stack([self[k + b] for b in range(batch_size)])
            k += batch_size
