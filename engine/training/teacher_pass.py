"""A distill stage's teacher pass ([distill] teacher_logits = "cached"): before the student is built, the
teacher's top-k logits of every window the stage will train on go to the run's cache
(engine/distill/teacher_topk.py), and the teacher leaves the GPU. `TrackedWindows` is the training
stream that remembers which windows it handed out, so that the loop reads their top-k back.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.contract.stage_context import StageContext
from engine.data import PackedDataset
from engine.distill.teacher_topk import TopKCache
from engine.distill.topk_files import stored_dtype
from engine.errors import UserError
from engine.training.models import Models

__all__ = ["TopKCache", "TrackedWindows", "fill_teacher_topk"]


class TrackedWindows:
    """The training windows of this rank from sample `start` on (as `iter(dataset)`), keeping the ids of
    the windows handed out since the last `taken()`."""

    def __init__(self, dataset: PackedDataset, start: int = 0):
        self.dataset, self.sample = dataset, start
        self._ids: list[int] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        i = self.dataset.window_index(self.sample)
        self.sample += 1
        self._ids.append(i)
        return self.dataset.window(i)

    def taken(self) -> list[int]:
        """The window ids handed out since the last call."""
        ids, self._ids = self._ids, []
        return ids


def fill_teacher_topk(ctx: StageContext, cfg: Any, acc: Any, seq: int, models: Models,
                      log: Callable[[str], None]) -> TopKCache:
    """A training stage's teacher pass: `store_teacher_topk` for the stage's models, then the teacher is
    dropped from `models` and its memory freed. The cache, for the loop."""
    teacher = models.teacher if models.teacher is not None else models.load_teacher
    if teacher is None:
        raise UserError(f"{ctx.stage}: teacher_logits = \"cached\" needs the teacher")
    cache = store_teacher_topk(ctx, cfg, acc, seq, models.spec, teacher,
                               models.teacher_path or str(getattr(models.teacher, "name_or_path", "")),
                               models.save_dtype, log)
    models.teacher = None
    gc.collect()
    if acc.device.type == "cuda":
        torch.cuda.empty_cache()
    return cache


def store_teacher_topk(ctx: StageContext, cfg: Any, acc: Any, seq: int, spec: Any,
                       teacher: nn.Module | Callable[[], nn.Module], teacher_path: str, model_dtype: str,
                       log: Callable[[str], None]) -> TopKCache:
    """Store the teacher's top-k logits of the windows this rank trains on with `cfg` (those not stored yet):
    `teacher` the model, or how to load it (only when windows are missing). `model_dtype`: [model].dtype, the
    teacher's on CUDA. The cache, opened."""
    from engine.distill.losses import teacher_logit_chunks
    from engine.training.step import shared_teacher

    rank, world = acc.process_index, acc.num_processes
    if spec.top_k is None or spec.vocab is None:
        raise UserError(f"{ctx.stage}: teacher_logits = \"cached\" needs top_k")
    if acc.is_fsdp2:
        raise UserError(f"{ctx.stage}: teacher_logits = \"cached\" does not run under FSDP yet; set "
                        "[launch] strategy = \"ddp\" or [distill] teacher_logits = \"live\"")
    vocab = spec.vocab
    if spec.top_k >= vocab:
        raise UserError(f"{ctx.stage}: top_k = {spec.top_k} keeps the whole vocabulary ({vocab}); lower top_k "
                        "or set teacher_logits = \"live\"")
    data = PackedDataset(ctx.layout.data_dir, "train", seq, cfg.seed, rank, world)
    samples = cfg.steps * cfg.global_batch_size // world
    ids = [data.window_index(k) for k in range(samples)]
    cuda = acc.device.type == "cuda"
    dtype = stored_dtype(acc.mixed_precision, model_dtype, cuda)

    def open_cache() -> TopKCache:
        return TopKCache(ctx.layout.teacher_topk_dir, teacher=teacher_path,
                         data_dir=ctx.layout.data_dir, num_windows=data.num_windows, seq=seq,
                         k=spec.top_k, vocab=vocab, dtype=dtype, float8=cfg.float8)

    if acc.is_main_process:  # creates the folder and its files; then the other ranks open them
        cache = open_cache()
        for stale in cache.remove_stale():
            log(f"removed {stale}: the stored logits of an earlier version of this teacher or of the data")
    acc.wait_for_everyone()
    if not acc.is_main_process:
        cache = open_cache()
    todo, windows = len(cache.missing(ids)), len(set(ids))
    log(f"teacher top-{spec.top_k} logits of {windows} windows in {cache.dir}: {windows - todo} stored, "
        f"{todo} to compute")
    if todo:
        model = teacher if isinstance(teacher, nn.Module) else teacher()
        runner = shared_teacher(acc, model, [None], bool(cfg.compile) and cuda, cfg.float8)
        del model
        batch = _fill_batch(cfg, world)
        t0, last = time.perf_counter(), [time.perf_counter()]

        def logits(inputs: torch.Tensor) -> Iterator[torch.Tensor]:
            with torch.no_grad(), acc.autocast():
                h, _ = runner(inputs)
                yield from teacher_logit_chunks(h.flatten(0, 1), runner.head, spec.chunk_tokens)

        def progress(done: int, total: int) -> None:
            now = time.perf_counter()
            if now - last[0] > 30 or done == total:
                last[0] = now
                rate = done * seq / max(now - t0, 1e-9)
                log(f"teacher top-{spec.top_k}: {done}/{total} windows ({rate:,.0f} tok/s)")

        cache.fill(ids, data.window, logits, batch, acc.device, progress)
        seconds = time.perf_counter() - t0
        if ctx.status is not None:  # (not ctx.progress: a resumed stage's step is not 0)
            ctx.status.update(teacher_topk_s=round(seconds, 3))
        log(f"teacher top-{spec.top_k} logits computed in {seconds:.1f} s")
        del runner
    return cache


def _fill_batch(cfg: Any, world: int) -> int:
    """Windows per teacher forward: the training micro-batch (its fixed size for "auto")."""
    from engine.config.micro_batch import AUTO, fixed_micro_batch

    return fixed_micro_batch(cfg, world) if cfg.micro_batch_size == AUTO else int(cfg.micro_batch_size)
