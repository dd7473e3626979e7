"""The teacher's top-k logits of the training windows, computed once and read back ([distill]
teacher_logits = "cached").

A distill stage with the cache runs the teacher over the windows it will train on before the student is
built, writes each position's k largest logits and their token ids, frees the teacher, and then trains
the student alone: the teacher's weights and forward leave the GPU (16 GB and ~37% of the step's FLOPs
for Llama-3.1-8B -> 4.5B), and a second student over the same windows reuses what the first wrote. The
KD loss is the one `top_k` computes with the teacher live (engine/distill/losses.py `chunk_loss`): the
stored logits are the teacher's own, in its compute dtype, so the two paths agree.

Files, in runs/<experiment>/teacher-topk/<key>/ (RunLayout.teacher_topk_dir; key: the teacher's files, the
prepared data, seq_length, k, vocabulary and dtype; a different teacher or data gets a new folder, and the
folders of an earlier version of the same teacher or data are removed, `remove_stale`):

    meta.json     what the folder holds
    values.bin    [windows, seq, k] logits (bf16 kept as its bits, else fp32)
    indices.bin   [windows, seq, k] int32 token ids
    done.bin      [windows] uint8, 1 once a window's rows are on disk

Windows are the split's unshuffled windows (engine/data/dataset.py `PackedDataset.window`), so any seed,
batch size or process count finds its windows by id. The files are sparse: only the windows a run used
take disk. A window's done byte is flushed after its rows, so a killed fill never leaves a window marked
done with half its rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import UserError

# the stored values' dtypes: bf16 has no numpy dtype, so its bits go to disk as int16
_STORE = {"bfloat16": (np.int16, torch.int16), "float32": (np.float32, torch.float32),
          "float16": (np.float16, torch.float16)}

TopK = tuple[torch.Tensor, torch.Tensor]  # (values [..., k], indices [..., k] int64)


def teacher_identity(path: str) -> list[Any]:
    """What changes when the teacher does: its config and weight files' names, sizes and times."""
    p = Path(path)
    if not p.is_dir():
        return [path]
    files = sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".json") and f.is_file())
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


class TopKCache:
    """One cache folder: open (or create) it, `fill` the missing windows, read `batches` back."""

    def __init__(self, parent: Path, *, teacher: str, data_dir: Path, num_windows: int, seq: int, k: int,
                 vocab: int, dtype: str, float8: bool = False):
        if dtype not in _STORE:
            raise ValueError(f"teacher top-k cache: dtype {dtype!r} is not one of {', '.join(_STORE)}")
        data_meta = (Path(data_dir) / "meta.json").read_bytes()
        self.meta = {"teacher": teacher_identity(teacher), "teacher_path": str(teacher),
                     "data": hashlib.sha256(data_meta).hexdigest()[:16], "windows": int(num_windows),
                     "seq": int(seq), "k": int(k), "vocab": int(vocab), "dtype": dtype}
        if float8:  # a float8 teacher's logits are others (only then in the key: older caches keep theirs)
            self.meta["float8"] = True
        key = hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode()).hexdigest()[:12]
        self.dir = Path(parent) / key
        self.k, self.seq, self.vocab, self.dtype = int(k), int(seq), int(vocab), dtype
        self.np_dtype, self.torch_store = _STORE[dtype]
        self.value_dtype = getattr(torch, dtype)  # the logits' own dtype (torch_store holds bf16's bits)
        self.value_bytes = np.dtype(self.np_dtype).itemsize
        self._open(int(num_windows))

    def _open(self, windows: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        meta_file = self.dir / "meta.json"
        if not meta_file.exists():  # temp file, then rename: a reader never sees half of it
            tmp = meta_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(self.meta, indent=1) + "\n")
            tmp.replace(meta_file)
        shape = (windows, self.seq, self.k)
        self.values = self._memmap("values.bin", self.np_dtype, shape)
        self.indices = self._memmap("indices.bin", np.int32, shape)
        self.done = self._memmap("done.bin", np.uint8, (windows,))

    def _memmap(self, name: str, dtype: Any, shape: tuple[int, ...]) -> np.memmap:
        path = self.dir / name
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if not path.exists() or path.stat().st_size != size:
            # "ab": another process opening the folder at once never loses rows; sparse: blocks are
            # allocated as windows are written
            with open(path, "ab") as f:
                f.truncate(size)
        return np.memmap(path, dtype=dtype, mode="r+", shape=shape)

    def remove_stale(self) -> list[Path]:
        """Remove the folders beside this one that hold an earlier version of the same teacher (the same path,
        other files: a fine-tuning run again, say) or of the run's data (prepared again); those logits will
        never be read. The folders removed."""
        gone = []
        for other in self.dir.parent.iterdir():
            try:
                meta = json.loads((other / "meta.json").read_text())
            except (OSError, ValueError):
                continue
            if (other != self.dir and meta.get("teacher_path") == self.meta["teacher_path"]
                    and (meta.get("teacher") != self.meta["teacher"] or meta.get("data") != self.meta["data"])):
                shutil.rmtree(other, ignore_errors=True)
                gone.append(other)
        return gone

    def missing(self, ids: Sequence[int]) -> list[int]:
        """The windows of `ids` not on disk yet, each once, in order."""
        seen: set[int] = set()
        out = []
        for i in ids:
            if not self.done[i] and i not in seen:
                seen.add(i)
                out.append(int(i))
        return out

    def fill(self, ids: Sequence[int], window: Callable[[int], np.ndarray],
             logits: Callable[[torch.Tensor], Iterator[torch.Tensor]], batch: int,
             device: torch.device, progress: Callable[[int, int], None] = lambda _done, _total: None) -> int:
        """Compute and store the windows of `ids` that are missing: `window(i)` gives window i's tokens
        (seq + 1), `logits(input_ids [B, seq])` yields the teacher's logits [n, V'] chunk by chunk over the
        flattened positions. The number of windows computed."""
        todo = self.missing(ids)
        for a in range(0, len(todo), batch):
            part = todo[a:a + batch]
            inputs = torch.from_numpy(np.stack([window(i)[:-1] for i in part])).to(device)
            vals, idx = [], []
            for chunk in logits(inputs):
                # top-k of the fp32 logits, as the live loss takes them (ties broken the same way)
                top = chunk[:, :self.vocab].float().topk(self.k, dim=-1)
                vals.append(top.values.to(chunk.dtype))
                idx.append(top.indices.to(torch.int32))
            v = torch.cat(vals).view(len(part), self.seq, self.k)
            x = torch.cat(idx).view(len(part), self.seq, self.k)
            v_host, x_host = v.to(self.value_dtype).cpu(), x.cpu()
            for j, i in enumerate(part):
                self.values[i] = v_host[j].view(self.torch_store).numpy()
                self.indices[i] = x_host[j].numpy()
            self.values.flush()
            self.indices.flush()
            self.done[part] = 1  # after the rows are on disk
            self.done.flush()
            progress(a + len(part), len(todo))
        return len(todo)

    def batches(self, ids: Sequence[int], micro: int, device: torch.device) -> list[TopK]:
        """The stored top-k of windows `ids`, as micro-batches of `micro` windows: (values [micro, seq, k]
        in the stored dtype, token ids [micro, seq, k] int64) on `device`."""
        if not all(self.done[i] for i in ids):
            lost = [int(i) for i in ids if not self.done[i]][:3]
            raise UserError(f"teacher top-k cache {self.dir}: windows {lost} are not on disk (the folder was "
                            "changed while the stage ran); delete the folder and run the stage again")
        out = []
        for a in range(0, len(ids), micro):
            rows = list(ids[a:a + micro])
            v = torch.from_numpy(np.ascontiguousarray(self.values[rows])).view(self.value_dtype)
            x = torch.from_numpy(np.ascontiguousarray(self.indices[rows]))  # int32: widened after the copy
            if device.type == "cuda":
                v, x = v.pin_memory(), x.pin_memory()
            out.append((v.to(device, non_blocking=True), x.to(device, non_blocking=True).long()))
        return out
