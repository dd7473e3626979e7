"""The audit inside a search's prune stage (`audit = N`): after the winner is saved, the N best-scored
candidates are each distilled with the student's full [distill] recipe, and their final validation
losses say whether the search's ranking held (engine/search/audit.py writes search.json's "audit").

Why in the stage and not as N planned stages: the audit is a measurement of the search, not a model of
the run; it keeps the plan and the run directory as they are (no extra stage directories, models or
checkpoints) and keeps only metrics.

Each candidate trains as its distill-<name> stage would train it (engine/training/loop.py): the same
config, loss and hidden-state spec, learning-rate schedule, seed, training windows from the start of
the train split (the same tokens for every candidate, and the ones the distill stage will read), and
the same number of held-out batches at the end. Held out: the final loss is read on the test split when
the data has one, as the search screened and scored on the validation split; without a test split it
falls back to the validation batches, and search.json's audit says which ("split"). What it leaves out
is what a measurement does not need: checkpoints, metrics lines and model/.

Progress: status.json's step counts the audit's optimizer steps over all candidates (with step_s, so a
canceller waits for the running step), the log a line per logged step with the ETA. A stop request
(SIGTERM/SIGINT/SIGHUP) ends the audit after the running step: search.json keeps the candidates done so
far (`cancelled`: true), and the stage ends with its search result and model/ intact.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
from torch import nn

from engine.contract import read_json, write_json
from engine.contract.search_audit import audit_line
from engine.contract.stage_context import StageContext
from engine.prune.importance import Importance
from engine.prune.student import layers_to_drop, prune_student
from engine.search.audit import audit_summary
from engine.shapes.candidates import SearchSpace, candidate_label
from engine.stages import stage_student


def run_audit(ctx: StageContext, space: SearchSpace, teacher: nn.Module, imp: Importance,
              tokenizer: Any) -> int | None:
    """Distil the audit's candidates (the best-scored in search.json) and add "audit" to search.json. Returns
    the largest micro-batch a candidate trained with (None if none trained): "auto" resolves per candidate."""
    from engine.data.dataset import read_meta
    from engine.distill.objective import output_weight
    from engine.models.liger import apply_kernels
    from engine.training.batches import validation_batches
    from engine.training.setup import make_accelerator
    from engine.training.stage_bodies import loss_spec
    from engine.training.stop_flag import StopFlag

    exp, stage, path = ctx.exp, ctx.stage, ctx.layout.search_file(ctx.stage)
    p = exp.prune_by_name(stage_student(stage))
    cfg = exp.distill_for(p.name)
    doc = read_json(path)
    scored = sorted((i for i, c in enumerate(doc["candidates"]) if c.get("rank") is not None),
                    key=lambda i: doc["candidates"][i]["rank"])
    chosen = scored[:p.audit]
    if len(chosen) < p.audit:
        ctx.log(f"[{stage}] audit: only {len(chosen)} candidates were scored; auditing those")
    acc = make_accelerator("ddp", exp.launch.mixed_precision)  # the prune stage is one process
    cuda = acc.device.type == "cuda"
    if not cuda:
        teacher = teacher.float()  # as the distill stage holds it on the CPU (in place: model/ is written)
    apply_kernels(teacher, cfg.kernels, cuda, "teacher")
    vocab = min(len(tokenizer), output_weight(teacher).shape[0])
    spec, seq = loss_spec(cfg, vocab), exp.data.seq_length
    split = "test" if "test" in read_meta(ctx.layout.data_dir)["splits"] else "validation"
    val = validation_batches(ctx.layout.data_dir, seq, cfg, 0, 1, acc.device, lambda m: ctx.log(f"[{stage}] {m}"),
                             split)
    # judged on the test split, each candidate is also measured on the validation split the search scored on:
    # the two rankings apart tell a score that ranks badly from splits that differ in kind
    scored_on = validation_batches(ctx.layout.data_dir, seq, cfg, 0, 1, acc.device, lambda m: None,
                                   "validation") if split == "test" else None
    # each seed: its own data order (and rounding bits); the first is the distill stage's own
    configs = [cfg.model_copy(update={"seed": cfg.seed + r}) for r in range(p.audit_seeds)]
    caches = _stored_logits(ctx, configs, acc, spec, teacher)
    progress = _Progress(ctx, len(chosen) * len(configs) * cfg.steps)
    times = f" x {len(configs)} seeds" if len(configs) > 1 else ""
    ctx.log(f"[{stage}] audit: distilling the {len(chosen)} best-scored candidates{times} with the [distill] recipe, "
            f"{cfg.steps} steps each ({progress.total} steps), on the same training windows; judged on the {split} "
            "split" + ("" if split == "test" else " (no test split prepared: the search saw these batches)"))
    final: dict[int, float] = {}
    on_validation: dict[int, float] = {}
    repeats: dict[int, list[float]] = {}
    seconds: dict[int, float] = {}
    micro: int | None = None

    def save(cancelled: bool) -> None:  # after each candidate: a crash or a cancel keeps what was measured
        doc["audit"] = audit_summary(doc, final, seconds, cfg.steps, len(chosen), cancelled=cancelled, split=split,
                                     repeats=repeats if len(configs) > 1 else None,
                                     validation=on_validation if scored_on is not None else None)
        write_json(path, doc)

    with StopFlag(ctx.status) as stop:
        for k, i in enumerate(chosen):
            label = candidate_label(space.candidates[i].shape)
            c0 = time.perf_counter()
            losses, seen = [], []
            for run_cfg in configs:
                if stop.signame:
                    break
                who = f"audit {k + 1}/{len(chosen)} {label}" + (f" seed {run_cfg.seed}" if len(configs) > 1 else "")
                got = _distil(ctx, run_cfg, space.student(i), space, teacher, imp, spec, [val, scored_on], acc, stop,
                              who, progress, caches.get(run_cfg.seed))
                if got is not None:
                    (loss, on_val), used = got
                    losses.append(loss)
                    seen.append(on_val)
                    micro = max(micro or 0, used)
            if len(losses) < len(configs):  # stopped
                break
            mean = sum(losses) / len(losses)
            on_val = sum(seen) / len(seen) if scored_on is not None else None
            said = f"{mean:.4f}" + (f" (mean of {', '.join(f'{x:.4f}' for x in losses)})" if len(losses) > 1 else "")
            also = f"; validation {on_val:.4f}" if on_val is not None else ""
            ctx.log(f"[{stage}] audit {k + 1}/{len(chosen)} {label}: final {split} loss {said}{also} "
                    f"(score rank {doc['candidates'][i]['rank']})")
            if all(math.isfinite(x) for x in losses):
                final[i], seconds[i], repeats[i] = mean, time.perf_counter() - c0, losses
                if on_val is not None:
                    on_validation[i] = on_val
            save(cancelled=bool(stop.signame))
        if stop.signame:
            save(cancelled=True)
            ctx.log(f"[{stage}] audit cancelled ({stop.signame}) after {len(final)} of {len(chosen)} candidates; "
                    "the search's result and model/ are kept")
    if cuda:
        torch.cuda.empty_cache()
    line = audit_line(doc)
    if line:
        ctx.log(f"[{stage}] {line}")
    return micro


def _stored_logits(ctx: StageContext, configs: list[Any], acc: Any, spec: Any, teacher: nn.Module) -> dict[int, Any]:
    """With [distill] teacher_logits = "cached", the teacher's top-k of each seed's windows, stored once
    (engine/training/teacher_pass.py): every candidate trains on the same windows, so the teacher's forward
    runs once instead of once per candidate, and the distill stage reads the first seed's windows back.
    Seed -> cache; empty when the teacher runs live."""
    from engine.training.teacher_pass import store_teacher_topk

    if configs[0].teacher_logits != "cached":
        return {}
    path = str(getattr(teacher, "name_or_path", ""))
    return {c.seed: store_teacher_topk(ctx, c, acc, ctx.exp.data.seq_length, spec, teacher, path, ctx.exp.model.dtype,
                                       lambda m: ctx.log(f"[{ctx.stage}] audit: {m}")) for c in configs}


class _Progress:
    """The audit's optimizer steps over all candidates (and seeds) in status.json, and its ETA."""

    def __init__(self, ctx: StageContext, total: int):
        from engine.training.loop import STATUS_EVERY_S

        self.ctx, self.total, self.every = ctx, total, STATUS_EVERY_S
        self.done, self.t0 = 0, time.perf_counter()
        self.status_at = self.t0
        ctx.progress(0, total_steps=total)

    def step(self, last: bool) -> float:
        """Count a step (`last`: of a run); the mean seconds a step so far."""
        self.done += 1
        now = time.perf_counter()
        step_s = (now - self.t0) / self.done
        if now - self.status_at > self.every or last:  # status.json is fsync'ed
            self.ctx.progress(self.done, total_steps=self.total, step_s=round(step_s, 3))
            self.status_at = now
        return step_s


def _distil(ctx: StageContext, cfg: Any, target: Any, space: SearchSpace, teacher: nn.Module, imp: Importance,
            spec: Any, judges: list[list[torch.Tensor] | None], acc: Any, stop: Any, who: str, progress: _Progress,
            cache: Any = None) -> tuple[list[float | None], int] | None:
    """One candidate distilled with `cfg` as its distill stage would (`cache`: the teacher's stored top-k of
    these windows, when it does): its final loss on each of `judges` (None for None) and the micro-batch it
    trained with; None when a stop request ended it first."""
    from accelerate.utils import set_seed

    from engine.data import PackedDataset
    from engine.models.hf import torch_dtype
    from engine.models.liger import apply_kernels
    from engine.training.batches import device_batches
    from engine.training.setup import lr_at
    from engine.training.stage_bodies import hidden_spec, train_dtype
    from engine.training.step import Trainer
    from engine.training.teacher_pass import TrackedWindows

    exp, stage, seq = ctx.exp, ctx.stage, ctx.exp.data.seq_length
    cuda = acc.device.type == "cuda"
    student = copy.deepcopy(prune_student(teacher, imp, target, layers_to_drop(imp, space.teacher, target)))
    student = student.to(torch_dtype(exp.model.dtype)).to(torch_dtype(train_dtype(exp, cuda)))
    apply_kernels(student, cfg.kernels, cuda, "student")
    set_seed(cfg.seed)  # as the recipe: every candidate from the same random state
    if cache is None:
        trainer = Trainer(acc, student, cfg, spec, teacher, hidden_spec(cfg, student, teacher, stage), seq_length=seq)
    else:
        trainer = Trainer(acc, student, cfg, spec, seq_length=seq, cached_top_k=cache.k)
    windows = TrackedWindows(PackedDataset(ctx.layout.data_dir, "train", seq, cfg.seed, 0, 1), 0)
    result = None
    try:
        for step in range(cfg.steps):
            if stop.signame:
                return None
            batches = device_batches(windows, trainer.accumulation, trainer.micro, acc.device)
            tops = cache.batches(windows.taken(), trainer.micro, acc.device) if cache is not None else None
            res = trainer.step(batches, lr_at(step, cfg), teacher_tops=tops)
            step_s = progress.step(last=step + 1 == cfg.steps)
            if (step + 1) % cfg.log_interval == 0 or step + 1 == cfg.steps:
                ctx.log(f"[{stage}] {who}: step {step + 1}/{cfg.steps} loss {res.loss:.4f}; "
                        f"ETA {step_s * (progress.total - progress.done):.0f}s")
        result = [trainer.validate(w) if w is not None else None for w in judges], trainer.micro
    finally:
        trainer.release()
        del trainer, student
        acc.free_memory()
    return result
