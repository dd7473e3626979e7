"""The prune-<name> stage: teacher -> importance -> pruned student in <run>/prune-<name>/.

Writes model/ (HF checkpoint + tokenizer), importance.json, and one metrics line with the
validation loss right after pruning: {"step": 0, "split": "val", "loss": ..., "params": ...}.
Targets are checked on the teacher's config before any weight is loaded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from engine.contract import append_metrics, human_count, tokenizer_source
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
from engine.orchestration.stage_process import StageContext, teacher_checkpoint
from engine.prune.depth import prune_depth, select_layers
from engine.prune.importance import Importance, calibrate, load_importance, random_importance
from engine.prune.width import prune_width, select_width
from engine.shapes.shape import StudentShape, count_params, student_shape, shape_from_config
from engine.stage_kinds import stage_student


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
    plan = student_shape(teacher_shape, p, where)
    ctx.log(f"[{stage}] teacher {src}: {teacher_shape.describe()}")

    # 2. the teacher
    device = compute_device()
    t0 = time.time()
    model = load_model(src, exp.model.dtype, exp.model.attn_implementation).to(device).eval()
    tokenizer = load_tokenizer(tokenizer_source(exp, layout))
    teacher_params = count_parameters(model)
    ctx.log(f"[{stage}] loaded the teacher on {device} in {time.time() - t0:.1f}s: {teacher_params:,} params")

    # 3. importance
    imp = _importance(ctx, p, plan, model)
    imp.save(layout.importance_file(stage), teacher_shape)

    # 4. prune
    if plan.method == "depth":
        drop = list(plan.drop_layers) if plan.drop_layers is not None else \
            select_layers(imp, teacher_shape.num_layers, plan.num_drop, plan.selection or "block-influence")
        ctx.log(f"[{stage}] dropping layers {drop}")
        student = prune_depth(model, drop)
    else:
        student = prune_width(model, select_width(imp, teacher_shape, plan.shape), plan.shape)
    del model
    if p.reinit:  # the from-scratch baseline: the student's shape, fresh weights
        student = _reinitialised(student, exp.seed)
        ctx.log(f"[{stage}] reinit = true: weights re-initialised (seed {exp.seed})")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    params = count_parameters(student)
    expected = count_params(plan.shape)
    ctx.log(f"[{stage}] params: teacher {teacher_params:,} ({human_count(teacher_params)}) -> student {params:,} "
            f"({human_count(params)}), {teacher_params / params:.2f}x smaller")
    if params != expected:
        ctx.log(f"[{stage}] note: {params:,} params differ from the config arithmetic ({expected:,})")
    ctx.log(f"[{stage}] student: {Arch(student).shape.describe()}")

    # 5. save, then the loss right after pruning
    out = save_model(student, layout.model_dir(stage), tokenizer)
    ctx.log(f"[{stage}] saved {out}")
    loss = _val_loss(ctx, student, p.calibration_batch_size)
    metrics = layout.metrics_file(stage)
    metrics.unlink(missing_ok=True)  # a rerun replaces the stage's single line
    append_metrics(metrics, {"step": 0, "split": "val", "loss": loss, "params": params})
    ctx.log(f"[{stage}] validation loss after pruning: {loss:.4f}")


def _reinitialised(student: torch.nn.Module, seed: int) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    fresh = AutoModelForCausalLM.from_config(student.config)
    p = next(student.parameters())
    return fresh.to(device=p.device, dtype=p.dtype).eval()


# ---- importance ---------------------------------------------------------------------------


def _importance(ctx: StageContext, p, plan: StudentShape, model: torch.nn.Module) -> Importance:
    exp, layout = ctx.exp, ctx.layout
    shape = Arch(model).shape
    if p.importance_from:
        name = p.importance_from.removeprefix("prune-")
        names = [q.name for q in exp.prune]
        path = layout.importance_file(f"prune-{name}") if name in names else Path(p.importance_from)
        imp = load_importance(path, shape)
        imp.meta = {**imp.meta, "reused_from": str(path)}
        ctx.log(f"[{ctx.stage}] importance reused from {path}")
        return imp
    if p.importance == "random":
        ctx.log(f"[{ctx.stage}] random importance (seed {exp.seed})")
        return random_importance(shape, exp.seed)
    if plan.method == "depth" and plan.drop_layers is not None:
        ctx.log(f"[{ctx.stage}] drop_layers is explicit; calibrating anyway for importance.json")
    from engine.data import PackedDataset  # lazily: needs only numpy, but keep imports light

    ds = PackedDataset(layout.data_dir, "train", exp.data.seq_length, seed=exp.seed)
    n = min(p.calibration_samples, len(ds))
    if n < p.calibration_samples:
        ctx.log(f"[{ctx.stage}] the training split has {len(ds)} windows; calibrating on all of them")
    bs = p.calibration_batch_size
    total = math.ceil(n / bs)
    lm_loss = plan.method == "depth" and plan.selection == "lm-loss" and plan.drop_layers is None
    ctx.progress(0, total_steps=total)
    t0 = time.time()
    imp = calibrate(model, _windows(ds, n, bs), batch_agg=p.batch_agg, seq_agg=p.seq_agg, lm_loss=lm_loss,
                    progress=lambda step: ctx.progress(step, total_steps=total))
    dt = time.time() - t0
    imp.meta.update(seq_length=exp.data.seq_length, split="train", seed=exp.seed)
    ctx.log(f"[{ctx.stage}] calibrated on {imp.meta['samples']} samples ({imp.meta['tokens']:,} tokens) "
            f"in {dt:.1f}s, {imp.meta['tokens'] / max(dt, 1e-9):,.0f} tokens/s")
    return imp


def _windows(ds, n: int, batch_size: int) -> Iterator[np.ndarray]:
    """The first n samples of the dataset's seeded order, in batches (the last may be smaller)."""
    for start in range(0, n, batch_size):
        yield np.stack([ds[k] for k in range(start, min(n, start + batch_size))])


# ---- loss right after pruning ------------------------------------------------------------------


def _val_loss(ctx: StageContext, model: torch.nn.Module, micro_batch_size: int) -> float:
    """Validation loss on the windows the distill stage validates on (seed 0, its val_batches),
    so this step-0 point starts the student's validation curve."""
    from engine.data import PackedDataset
    from engine.evaluate import evaluate_loss

    exp = ctx.exp
    ds = PackedDataset(ctx.layout.data_dir, "validation", exp.data.seq_length, seed=0)
    train = exp.distill or exp.finetune
    if train is not None:
        batches, mbs = train.val_batches, train.micro_batch_size
    elif exp.eval is not None:
        batches, mbs = exp.eval.batches or 20, exp.eval.micro_batch_size
    else:
        batches, mbs = 5, micro_batch_size
    return float(evaluate_loss(model, ds, batches, mbs))  # at most the split (see evaluate.batch_plan)
