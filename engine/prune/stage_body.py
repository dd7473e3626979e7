"""The prune-<name> stage: teacher -> importance -> pruned student in <run>/prune-<name>/.

Writes model/ (HF checkpoint + tokenizer), importance.json, and one metrics line with the
validation loss right after pruning: {"step": 0, "split": "val", "loss": ..., "params": ...}.
A search student (method = "search") also writes search.json; its model/ is the winner.
Targets are checked on the teacher's config before any weight is loaded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.config.micro_batch import fixed_micro_batch
from engine.config.shape import StudentShape, count_params, shape_from_config, student_shape
from engine.contract import append_metrics, human_count, tokenizer_source
from engine.contract.stage_context import StageContext, teacher_checkpoint
from engine.models.adapter import Arch
from engine.models.hf import (
    check_supported,
    compute_device,
    count_parameters,
    load_config,
    load_model,
    load_tokenizer,
    save_model,
)
from engine.prune.importance import Importance, calibrate, load_importance, random_importance
from engine.prune.student import layers_to_drop, prune_student
from engine.shapes.candidates import SearchSpace, search_space
from engine.stages import PRUNE, method_of, stage_student
from engine.stages.prune import earlier_student
from engine.training.memory_report import MemoryReport


def prune_stage(ctx: StageContext) -> None:
    if not ctx.is_main:
        return  # pruning is a single-process job; extra ranks have nothing to do
    exp, layout, stage = ctx.exp, ctx.layout, ctx.stage
    p = exp.prune_by_name(stage_student(stage))
    where = f"{exp.source}: prune[{p.name}]"
    src = teacher_checkpoint(ctx)

    # 1. the targets, on the real config, before loading weights
    cfg = load_config(src).to_dict()
    check_supported(cfg.get("model_type", "?"), src)
    teacher_shape = shape_from_config(cfg, where=src)
    target: StudentShape | SearchSpace = (
        search_space(teacher_shape, p, where, exp.model.dtype, exp.data.seq_length) if method_of(p.method).searches
        else student_shape(teacher_shape, p, where))
    ctx.log(f"[{stage}] teacher {src}: {teacher_shape.describe()}")
    device = compute_device()
    speed = None
    if isinstance(target, SearchSpace):  # a speed budget narrows the candidates, timed before the teacher loads
        from engine.search.speed_timing import speed_search

        speed = speed_search(exp, p, cfg, device, where, lambda line: ctx.log(f"[{stage}] {line}"))
        target = speed.narrow(target) if speed is not None else target

    # 2. the teacher
    t0 = time.time()
    model = load_model(src, exp.model.dtype, exp.model.attn_implementation).to(device).eval()
    tokenizer = load_tokenizer(tokenizer_source(exp, layout))
    teacher_params = count_parameters(model)
    ctx.log(f"[{stage}] loaded the teacher on {device} in {time.time() - t0:.1f}s: {teacher_params:,} params")
    memory = MemoryReport(ctx, device, lambda line: ctx.log(f"[{stage}] {line}"))
    memory.predict(1, None)  # a search that trains candidates: at the [distill] micro-batch (auto: the least)

    # 3. importance: one calibration pass serves every candidate of a search
    lm_loss = _needs_lm_loss(target)
    imp = _importance(ctx, p, target, model, lm_loss)
    imp.save(layout.importance_file(stage), teacher_shape)

    # 4. prune (a search scores its candidates on the validation windows first)
    loss: float | None = None
    if isinstance(target, SearchSpace):
        from engine.prune.search_part import run_search

        windows = val_windows(ctx, p.calibration_batch_size, device)
        scorer = _scorer(ctx, p, model, tokenizer, windows, device)
        winner = run_search(ctx, target, model, imp, windows, scorer, speed)
        student, loss, expected = winner.student, winner.loss, target.candidates[winner.index].shape
        if scorer.micro:  # a distill score: the size it trained with ("auto" may choose more than predicted)
            memory.predict(1, scorer.micro, f" at the score's micro-batch {scorer.micro}:")
    else:
        drop = layers_to_drop(imp, teacher_shape, target)
        if drop:
            ctx.log(f"[{stage}] dropping layers {drop}")
        student, expected = prune_student(model, imp, target, drop), target.shape
    audit_teacher = model if isinstance(target, SearchSpace) and p.audit else None  # the audit distils from it
    del model
    if p.reinit:  # the from-scratch baseline: the student's shape, fresh weights
        student = _reinitialised(student, exp.seed)
        loss = None
        ctx.log(f"[{stage}] reinit = true: weights re-initialised (seed {exp.seed})")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    params = count_parameters(student)
    ctx.log(f"[{stage}] params: teacher {teacher_params:,} ({human_count(teacher_params)}) -> student {params:,} "
            f"({human_count(params)}), {teacher_params / params:.2f}x smaller")
    if params != count_params(expected):
        ctx.log(f"[{stage}] note: {params:,} params differ from the config arithmetic ({count_params(expected):,})")
    ctx.log(f"[{stage}] student: {Arch(student).shape.describe()}")

    # 5. save, then the loss right after pruning
    out = save_model(student, layout.model_dir(stage), tokenizer)
    ctx.log(f"[{stage}] saved {out}")
    if loss is None:
        loss = _val_loss(ctx, student, p.calibration_batch_size)
    metrics = layout.metrics_file(stage)
    metrics.unlink(missing_ok=True)  # a rerun replaces the stage's single line
    append_metrics(metrics, {"step": 0, "split": "val", "loss": loss, "params": params})
    ctx.log(f"[{stage}] validation loss after pruning: {loss:.4f}")
    # on CUDA: the peak of calibration, search and pruning against the prediction
    memory.measured(0, " before the audit" if audit_teacher is not None else "")

    # 6. a search's audit: its best-scored candidates distilled in full, after the result is saved
    if audit_teacher is not None:
        from engine.prune.audit_part import run_audit

        del student
        micro = run_audit(ctx, target, audit_teacher, imp, tokenizer)
        if micro:  # as the distill score's: the size "auto" chose (a loss-scored search predicted the least)
            memory.predict(1, micro, f" at the audit's micro-batch {micro}:")
        memory.measured(None, " with the audit")  # (the status keeps the audit's step count)


def _reinitialised(student: torch.nn.Module, seed: int) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    fresh = AutoModelForCausalLM.from_config(student.config)
    p = next(student.parameters())
    return fresh.to(device=p.device, dtype=p.dtype).eval()


# ---- importance ---------------------------------------------------------------------------


def _needs_lm_loss(target: StudentShape | SearchSpace) -> bool:
    """LM-loss layer scores cost one forward per layer and batch: only when they choose layers."""
    if isinstance(target, SearchSpace):
        return target.selection == "lm-loss" and target.drops_layers()
    return target.selection == "lm-loss" and target.num_drop > 0 and target.drop_layers is None


def _importance(ctx: StageContext, p: Any, target: StudentShape | SearchSpace, model: torch.nn.Module,
                lm_loss: bool) -> Importance:
    exp, layout = ctx.exp, ctx.layout
    shape = Arch(model).shape
    if p.importance_from:
        name = earlier_student(p.importance_from, [q.name for q in exp.prune])
        path = layout.importance_file(PRUNE.stage(name)) if name else Path(p.importance_from)
        imp = load_importance(path, shape)
        imp.meta = {**imp.meta, "reused_from": str(path)}
        ctx.log(f"[{ctx.stage}] importance reused from {path}")
        return imp
    if p.importance == "random":
        ctx.log(f"[{ctx.stage}] random importance (seed {exp.seed})")
        return random_importance(shape, exp.seed)
    if isinstance(target, StudentShape) and target.drop_layers is not None:
        ctx.log(f"[{ctx.stage}] drop_layers is explicit; calibrating anyway for importance.json")
    from engine.data import PackedDataset  # lazily: needs only numpy, but keep imports light

    ds = PackedDataset(layout.data_dir, "train", exp.data.seq_length, seed=exp.seed)
    n = min(p.calibration_samples, len(ds))
    if n < p.calibration_samples:
        ctx.log(f"[{ctx.stage}] the training split has {len(ds)} windows; calibrating on all of them")
    bs = p.calibration_batch_size
    total = math.ceil(n / bs)
    ctx.progress(0, total_steps=total)
    t0 = time.time()
    imp = calibrate(model, _windows(ds, n, bs), batch_agg=p.batch_agg, seq_agg=p.seq_agg, lm_loss=lm_loss,
                    progress=lambda step: ctx.progress(step, total_steps=total))
    dt = time.time() - t0
    imp.meta.update(seq_length=exp.data.seq_length, split="train", seed=exp.seed)
    ctx.log(f"[{ctx.stage}] calibrated on {imp.meta['samples']} samples ({imp.meta['tokens']:,} tokens) "
            f"in {dt:.1f}s, {imp.meta['tokens'] / max(dt, 1e-9):,.0f} tokens/s" + (" with LM-loss layer scores"
                                                                                 if lm_loss else ""))
    return imp


def _windows(ds, n: int, batch_size: int) -> Iterator[np.ndarray]:
    """The first n samples of the dataset's seeded order, in batches (the last may be smaller)."""
    for start in range(0, n, batch_size):
        yield np.stack([ds[k] for k in range(start, min(n, start + batch_size))])


# ---- loss right after pruning ------------------------------------------------------------------


def val_windows(ctx: StageContext, micro_batch_size: int, device: torch.device) -> list[torch.Tensor]:
    """The validation windows the distill stage validates on (seed 0, its val_batches x
    micro_batch_size), on `device`: the step-0 point of the student's validation curve, and the
    batches every search candidate is scored on."""
    from engine.data import PackedDataset
    from engine.evaluation.loss import batch_plan

    exp = ctx.exp
    ds = PackedDataset(ctx.layout.data_dir, "validation", exp.data.seq_length, seed=0)
    train = exp.distill or exp.finetune
    if train is not None:
        batches, mbs = train.val_batches, fixed_micro_batch(train)  # the distill stage's validation batches
    elif exp.eval is not None:
        batches, mbs = exp.eval.batches, exp.eval.micro_batch_size  # None: the whole split, as eval reads it
    else:
        batches, mbs = 5, micro_batch_size
    count, micro = batch_plan(len(ds), batches, mbs)  # at most the split
    it = ds.batches(micro, start=0)
    return [torch.as_tensor(np.asarray(next(it))).to(device=device, dtype=torch.long) for _ in range(count)]


def _val_loss(ctx: StageContext, model: torch.nn.Module, micro_batch_size: int) -> float:
    from engine.evaluation.loss import evaluate_loss

    device = next(model.parameters()).device
    return float(evaluate_loss(model, val_windows(ctx, micro_batch_size, device)))


# ---- how a search scores -----------------------------------------------------------------------


def _scorer(ctx: StageContext, p: Any, teacher: torch.nn.Module, tokenizer: Any, windows: list[torch.Tensor],
            device: torch.device) -> Any:
    from engine.search import scoring

    if p.score_task:
        return scoring.task_scorer(ctx.exp, p.score_task, tokenizer)
    if p.score == "loss":
        return scoring.loss_scorer(windows)
    exp = ctx.exp
    cfg = exp.distill_for(p.name)
    from engine.data import PackedDataset

    # per score_seeds data order: the same windows for every candidate (epochs wrap); the first is the distill
    # stage's own
    orders = []
    for r in range(p.score_seeds):
        it = PackedDataset(ctx.layout.data_dir, "train", exp.data.seq_length, seed=cfg.seed + r).batches(
            cfg.global_batch_size, start=0)
        orders.append([torch.as_tensor(next(it)).to(device=device, dtype=torch.long) for _ in range(p.score_steps)])
    vocab = min(len(tokenizer), teacher.get_output_embeddings().weight.shape[0])
    return scoring.distill_scorer(exp, p.name, teacher, vocab, p.score_steps, orders, windows, p.score)
