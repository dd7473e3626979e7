"""The one training loop: `finetune` (next-token loss) and `distill-<name>` (student learns from teacher).

Read top to bottom: `finetune_stage` / `distill_stage` build the models, `run_training` wraps them
on accelerate (DDP, or FSDP2 when [launch].strategy = "fsdp"), resumes from the last checkpoint,
then loops over optimizer steps: `Trainer.launch` (engine/training/step.py) queues the micro-batches
(gradient accumulation, global_batch_size = micro_batch_size x accumulation x processes), clipping
and the update, and the loop reads each step's loss one step behind the GPU. Validation, metrics, TensorBoard, checkpoints
and the final HF checkpoint follow the run-directory contract (engine/contract/).

Precision: with mixed_precision = "bf16" on CUDA the student keeps fp32 master weights and
AdamW state; matrix products run in bf16. Where `master_weights` applies (engine/training/step.py), the
model itself is bf16 and the fp32 masters live in the optimizer (engine/training/master_adamw.py); else the
weights stay fp32 under autocast (DDP) or FSDP2's param_dtype. The student is loaded in fp32 either
way, so the masters start from the checkpoint's full precision. The frozen teacher is held in
[model].dtype. On the CPU everything is fp32.
"""

from __future__ import annotations

import copy
import math
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.config import DistillConfig, Experiment, TrainConfig
from engine.contract import append_metrics, tokenizer_source, truncate_metrics_after
from engine.distill.losses import LossSpec
from engine.distill.objective import (
    HiddenSpec,
    decoder_layers,
    default_layer_map,
    output_weight,
)
from engine.errors import Cancelled, UserError
from engine.models.attention import restore_sdpa
from engine.orchestration.stage_process import StageContext, has_checkpoint, teacher_checkpoint
from engine.stage_kinds import stage_student
from engine.training.checkpoint import latest_checkpoint, load_checkpoint, remove_checkpoints, save_checkpoint
from engine.training.step import PendingStep, StepResult, Trainer, lr_at, make_accelerator, peak_flops

# Trainer keys that may change between a checkpoint and its resume (a run that diverged can be
# resumed with a lower lr); any other change of the stage's inputs starts the stage afresh.
RESUMABLE_CHANGES = ("steps", "lr", "min_lr", "warmup_steps", "grad_clip", "val_interval", "val_batches",
                     "checkpoint_interval", "log_interval", "max_nan_steps", "compile", "gradient_checkpointing")

# Tokens per chunk of the fused next-token loss when fine-tuning ([distill].chunk_tokens for KD).
CE_CHUNK_TOKENS = 2048

class TrainingDiverged(UserError):
    """Too many consecutive non-finite losses."""


# ---- the loop --------------------------------------------------------------------------


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checks it between steps, saves and raises Cancelled."""

    def __init__(self) -> None:
        self.signame: str | None = None
        self._prev: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._prev[sig] = signal.getsignal(sig)
            signal.signal(sig, self._set)
        return self

    def _set(self, signum: int, _frame: Any) -> None:
        self.signame = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._prev.items():
            signal.signal(sig, handler)


class _TensorBoard:
    """Event files in <stage>/tensorboard/ (rank 0); skipped when tensorboard is not installed."""

    def __init__(self, ctx: StageContext):
        self.writer = None
        if not ctx.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            ctx.log("tensorboard is not installed: no event files (metrics.jsonl is still written)")
            return
        self.writer = SummaryWriter(str(ctx.dir / "tensorboard"))

    def log(self, split: str, step: int, values: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and k not in ("step", "tokens") and math.isfinite(v):
                self.writer.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class _Models:
    student: nn.Module
    teacher: nn.Module | None
    tokenizer: Any
    spec: LossSpec
    hidden: HiddenSpec | None
    save_dtype: str


def _sample_batches(it: Iterator[Any], count: int, micro: int, device: torch.device) -> list[torch.Tensor]:
    import numpy as np

    out = []
    for _ in range(count):
        batch = torch.from_numpy(np.stack([next(it) for _ in range(micro)]))
        if device.type == "cuda":  # pinned, so the copy is queued without waiting for the GPU
            batch = batch.pin_memory()
        out.append(batch.to(device, non_blocking=True))
    return out


def resume_key(exp: Experiment, stage: str, section: str) -> str:
    """The stage's config hash with the resumable trainer keys neutralised (see RESUMABLE_CHANGES)."""
    clone = exp.model_copy(deep=True)
    sec = getattr(clone, section)
    defaults = type(sec)()
    for key in RESUMABLE_CHANGES:
        object.__setattr__(sec, key, getattr(defaults, key))
    return clone.stage_hash(stage)


def run_training(ctx: StageContext, cfg: TrainConfig, section: str,
                 build: Any) -> None:
    """The loop shared by finetune and distill; `build(cuda, meta)` loads the models (`_Models`)."""
    from engine.data import PackedDataset, read_meta

    exp, layout = ctx.exp, ctx.layout
    meta = read_meta(layout.data_dir)
    models: _Models = build(torch.cuda.is_available(), meta)
    layer_classes = list(getattr(models.student, "_no_split_modules", None) or []) or None
    acc = make_accelerator(exp.launch.strategy, exp.launch.mixed_precision, layer_classes)
    if exp.launch.strategy == "fsdp" and not acc.is_fsdp2 and acc.num_processes > 1:
        ctx.log(f"[{ctx.stage}] strategy fsdp needs GPUs (accelerate shards only CUDA models): using DDP")
    world, rank = acc.num_processes, acc.process_index
    if cfg.global_batch_size % (cfg.micro_batch_size * world):
        raise UserError(f"{section}.global_batch_size: {cfg.global_batch_size} is not a multiple of "
                        f"micro_batch_size x processes = {cfg.micro_batch_size} x {world}; change one of them")
    seq = exp.data.seq_length
    tokens_per_step = cfg.global_batch_size * seq
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    trainer = Trainer(acc, models.student, cfg, models.spec, models.teacher, models.hidden)
    del models.student, models.teacher

    ckpt_root = layout.checkpoints_dir(ctx.stage)
    key = resume_key(exp, ctx.stage, section)
    state: dict[str, Any] = {"step": 0, "samples": 0, "tokens": 0, "nan_steps": 0, "resume_key": key}
    found = latest_checkpoint(ckpt_root)
    if found is not None:
        from engine.contract import read_json

        old = read_json(found[1] / "trainer_state.json") or {}
        if old.get("resume_key") != key:
            ctx.log(f"[{ctx.stage}] checkpoints in {ckpt_root} were written with other settings: starting afresh")
            acc.wait_for_everyone()
            if acc.is_main_process:
                remove_checkpoints(ckpt_root)
            acc.wait_for_everyone()
            found = None
    if found is not None:
        state.update(load_checkpoint(acc, found[1]))
        trainer.adopt_loaded_masters()
        ctx.log(f"[{ctx.stage}] resumed from {found[1]} (step {state['step']})")
    metrics = layout.metrics_file(ctx.stage)
    if ctx.is_main:
        if found:
            truncate_metrics_after(metrics, state["step"])
        else:  # a fresh start: no curves of an earlier attempt
            metrics.unlink(missing_ok=True)
            shutil.rmtree(ctx.dir / "tensorboard", ignore_errors=True)
    per_rank_start = state["samples"] // world
    train_ds = PackedDataset(layout.data_dir, "train", seq, cfg.seed, rank, world, per_rank_start)
    train_it = iter(train_ds)
    val_batches = _val_batches(layout.data_dir, seq, cfg, rank, world, acc.device, ctx)
    peak = peak_flops(acc.device)
    tb = _TensorBoard(ctx)
    ctx.progress(state["step"], total_steps=cfg.steps)
    ctx.log(f"[{ctx.stage}] {cfg.steps} steps x {cfg.global_batch_size} sequences x {seq} tokens "
            f"({world} process(es), {trainer.accumulation} micro-batch(es) of {cfg.micro_batch_size} each); "
            f"loss {models.spec.kind}; {trainer.flops_per_token / 1e9:.2f} GFLOP/token; {trainer.precision}")

    def checkpoint() -> None:
        save_checkpoint(acc, ckpt_root, state["step"], {k: v for k, v in state.items() if not k.startswith("_")})
        state["_saved"] = state["step"]

    def log_val() -> None:
        if not val_batches:
            return
        loss = trainer.validate(val_batches)
        rec = {"step": state["step"], "tokens": state["tokens"], "split": "val", "loss": loss}
        if ctx.is_main:
            append_metrics(metrics, rec)
            tb.log("val", state["step"], rec)
        ctx.log(f"[{ctx.stage}] step {state['step']}/{cfg.steps} val loss {loss:.4f}")
        ctx.progress(state["step"], total_steps=cfg.steps)

    clock = {"time": time.perf_counter(), "step": state["step"], "status": 0.0}
    nan_run = {"n": 0}

    def handle(step: int, res: StepResult) -> None:
        """Book-keeping of a finished step (read one step behind the GPU): NaN count, metrics."""
        if not res.finite:
            state["nan_steps"] += 1
            nan_run["n"] += 1
            ctx.log(f"[{ctx.stage}] step {step}: non-finite loss/gradients ({res.loss}, grad norm "
                    f"{res.grad_norm}); update skipped ({nan_run['n']} in a row)")
            if nan_run["n"] >= cfg.max_nan_steps:
                good = latest_checkpoint(ckpt_root)
                where = f"{good[1]} (step {good[0]})" if good else "none written yet"
                raise TrainingDiverged(
                    f"{ctx.stage}: the loss was not finite for {nan_run['n']} consecutive steps (up to step "
                    f"{step}); stopped. Last good checkpoint: {where}. Lower {section}.lr or raise "
                    f"{section}.warmup_steps, then run the stage again to resume from it")
        else:
            nan_run["n"] = 0
        if res.cancel:
            state["_cancel"] = True
        if step % cfg.log_interval and step != cfg.steps:
            return
        now = time.perf_counter()
        tps = tokens_per_step * (step - clock["step"]) / max(now - clock["time"], 1e-9)
        clock.update(time=now, step=step)
        rec = {"step": step, "tokens": step * tokens_per_step, "split": "train",
               "loss": res.loss if res.finite else float("nan"), "lr": lr_at(step - 1, cfg),
               "grad_norm": res.grad_norm, "tokens_per_s": tps,
               "mfu": (tps * trainer.flops_per_token / (peak * world)) if peak else None,
               "gpu_mem_gb": (torch.cuda.max_memory_allocated(acc.device) / 2**30
                              if acc.device.type == "cuda" else None),
               "nan_steps": state["nan_steps"]}
        if models.spec.uses_teacher:
            rec.update(kd_loss=res.parts[0], ce_loss=res.parts[1])
            if models.hidden is not None:
                rec["hidden_loss"] = res.parts[2]
        if ctx.is_main:
            append_metrics(metrics, rec)
            tb.log("train", step, rec)
        if now - clock["status"] > 2.0 or step == cfg.steps:  # status.json is fsync'ed: not every step
            ctx.progress(step, total_steps=cfg.steps)
            clock["status"] = now
        ctx.log(f"[{ctx.stage}] step {step}/{cfg.steps} loss {res.loss:.4f} lr {rec['lr']:.2e} "
                f"grad {res.grad_norm:.3f} {tps:,.0f} tok/s")

    pending: list[tuple[int, PendingStep]] = []

    def drain(keep: int = 0) -> None:
        while len(pending) > keep:
            step, launched = pending.pop(0)
            handle(step, launched.result())

    if state["step"] == 0:
        log_val()
    state["_saved"] = state["step"] if found else -1
    if acc.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(acc.device)
    try:
        with _StopFlag() as stop:
            while state["step"] < cfg.steps:
                batches = _sample_batches(train_it, trainer.accumulation, cfg.micro_batch_size, acc.device)
                launched = trainer.launch(batches, lr_at(state["step"], cfg), cancel=stop.signame is not None)
                state["step"] += 1
                state["samples"] += cfg.global_batch_size
                state["tokens"] += tokens_per_step
                step = state["step"]
                pending.append((step, launched))
                boundary = step % cfg.val_interval == 0 or step % cfg.checkpoint_interval == 0 or step == cfg.steps
                drain(keep=0 if boundary else 1)  # read step-1 while step runs on the GPU
                if state.get("_cancel"):
                    raise Cancelled(stop.signame or "SIGTERM")
                if step % cfg.val_interval == 0 or step == cfg.steps:
                    log_val()
                if step % cfg.checkpoint_interval == 0 and step < cfg.steps:
                    checkpoint()
    except Cancelled:
        drain()  # the launched steps finish, so the checkpoint holds their updates
        if state["_saved"] != state["step"]:
            ctx.log(f"[{ctx.stage}] cancelled: saving a checkpoint at step {state['step']}")
            checkpoint()
        tb.close()
        raise
    tb.close()
    _save_final(ctx, trainer, models)
    acc.wait_for_everyone()
    if acc.is_main_process:
        remove_checkpoints(ckpt_root)  # the stage is complete: model/ holds the result
    acc.wait_for_everyone()


def _val_batches(data_dir: Path, seq: int, cfg: TrainConfig, rank: int, world: int,
                 device: torch.device, ctx: StageContext) -> list[torch.Tensor]:
    """The same `val_batches` micro-batches every time (this rank's shard of the validation split)."""
    from engine.data import PackedDataset
    from engine.evaluate import batch_plan

    try:
        ds = PackedDataset(data_dir, "validation", seq, seed=0, rank=rank, world_size=world)
    except UserError as e:
        ctx.log(f"[{ctx.stage}] no validation: {e}")
        return []
    count, micro = batch_plan(len(ds), cfg.val_batches, cfg.micro_batch_size)
    return _sample_batches(iter(ds), count, micro, device)


def _save_final(ctx: StageContext, trainer: Trainer, models: _Models) -> None:
    """model/ = a stock HF checkpoint of the student in [model].dtype, with the tokenizer."""
    from transformers import AutoModelForCausalLM

    from engine.models.hf import save_model, torch_dtype

    state = trainer.full_student_state()
    if not trainer.accelerator.is_main_process:
        return
    dtype = torch_dtype(models.save_dtype)
    config = copy.deepcopy(trainer.unwrapped().student.config)
    restore_sdpa(config)
    cast: dict[int, torch.Tensor] = {}
    state = {k: cast.setdefault(id(v), v.detach().to("cpu", dtype)) for k, v in state.items()}
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    fresh.load_state_dict(state, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    missing = [n for n, p in fresh.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"final model: parameters missing from the trained state: {missing[:3]}")
    fresh.config.use_cache = True
    out = save_model(fresh, ctx.layout.model_dir(ctx.stage), models.tokenizer)
    ctx.log(f"[{ctx.stage}] saved {out}")


# ---- stage bodies ----------------------------------------------------------------------


def _train_dtype(exp: Experiment, cuda: bool) -> str:
    """fp32 master weights under mixed precision (and on the CPU); else [model].dtype."""
    if not cuda or exp.launch.mixed_precision != "no":
        return "float32"
    return exp.model.dtype


def _check_vocab(model: nn.Module, meta: dict[str, Any], what: str) -> None:
    rows = output_weight(model).shape[0]
    if int(meta["vocab_size"]) > rows:
        raise UserError(f"{what}: the prepared data uses token ids up to {meta['vocab_size'] - 1} but the "
                        f"model's vocabulary has {rows} rows; prepare the data with the model's tokenizer")


def finetune_stage(ctx: StageContext) -> None:
    exp = ctx.exp
    cfg = exp.finetune
    if cfg is None:
        raise UserError(f"{exp.source}: no [finetune] section")

    def build(cuda: bool, meta: dict[str, Any]) -> _Models:
        from engine.models.hf import build_scratch_model, load_model, load_tokenizer

        tokenizer = load_tokenizer(tokenizer_source(exp, ctx.layout))
        dtype = _train_dtype(exp, cuda)
        if exp.model.init == "scratch":
            vocab = max(int(meta["vocab_size"]), len(tokenizer))
            model = build_scratch_model(exp.model.arch, vocab, dtype, exp.model.attn_implementation,
                                        seed=exp.seed, bos_token_id=meta.get("bos_token_id"),
                                        eos_token_id=meta.get("eos_token_id"))
        else:
            model = load_model(exp.model.path, dtype, exp.model.attn_implementation)
        _check_vocab(model, meta, "finetune")
        spec = LossSpec("ce", chunk_tokens=CE_CHUNK_TOKENS)
        return _Models(model, None, tokenizer, spec, None, exp.model.dtype)

    run_training(ctx, cfg, "finetune", build)


def distill_stage(ctx: StageContext) -> None:
    exp, layout = ctx.exp, ctx.layout
    if exp.distill is None:
        raise UserError(f"{exp.source}: no [distill] section")
    name = stage_student(ctx.stage)
    cfg: DistillConfig = exp.distill_for(name)  # [distill] with this student's own overrides
    student_dir = layout.model_dir(f"prune-{name}")
    if not has_checkpoint(student_dir):
        raise UserError(f"{ctx.stage}: no student at {student_dir}; run the prune-{name} stage first")
    teacher_dir = teacher_checkpoint(ctx)

    def build(cuda: bool, meta: dict[str, Any]) -> _Models:
        from engine.models.hf import load_model

        tokenizer = check_same_tokenizer(str(student_dir), teacher_dir, tokenizer_source(exp, layout))
        student = load_model(str(student_dir), _train_dtype(exp, cuda), exp.model.attn_implementation)
        teacher = load_model(teacher_dir, exp.model.dtype if cuda else "float32", exp.model.attn_implementation)
        _check_vocab(student, meta, f"{ctx.stage} student")
        _check_vocab(teacher, meta, f"{ctx.stage} teacher")
        vocab = min(len(tokenizer), output_weight(student).shape[0], output_weight(teacher).shape[0])
        spec = loss_spec(cfg, vocab)
        hidden = hidden_spec(cfg, student, teacher, ctx.stage)
        return _Models(student, teacher, tokenizer, spec, hidden, exp.model.dtype)

    run_training(ctx, cfg, "distill", build)


def loss_spec(cfg: DistillConfig, vocab: int | None) -> LossSpec:
    return LossSpec(kind=cfg.loss, temperature=cfg.temperature, top_k=cfg.top_k, kd_weight=cfg.kd_weight,
                    ce_weight=cfg.ce_weight, vocab=vocab, chunk_tokens=cfg.chunk_tokens)


def hidden_spec(cfg: DistillConfig, student: nn.Module, teacher: nn.Module, stage: str) -> HiddenSpec | None:
    if cfg.hidden_weight <= 0:
        return None
    ns, nt = len(decoder_layers(student)), len(decoder_layers(teacher))
    pairs = tuple((int(s), int(t)) for s, t in cfg.layer_map) if cfg.layer_map else default_layer_map(ns, nt)
    for s, t in pairs:
        if not (0 <= s < ns and 0 <= t < nt):
            raise UserError(f"distill.layer_map: [{s}, {t}] is out of range for {stage} (student layers "
                            f"0..{ns - 1}, teacher layers 0..{nt - 1}); fix the pair")
    return HiddenSpec(cfg.hidden_weight, cfg.hidden_loss, pairs)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the token -> id map (what must match for logits to be comparable)."""
    import hashlib
    import json

    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def check_same_tokenizer(student_dir: str, teacher_dir: str, fallback: str) -> Any:
    """The shared tokenizer; a UserError when the student's and the teacher's differ."""
    from engine.models.hf import load_tokenizer

    def has_tokenizer(d: str) -> bool:
        p = Path(d)
        return p.is_dir() and any((p / f).exists() for f in ("tokenizer.json", "tokenizer_config.json",
                                                              "tokenizer.model", "vocab.json"))

    ref = load_tokenizer(fallback)
    for who, d in (("student", student_dir), ("teacher", teacher_dir)):
        if has_tokenizer(d):
            tok = load_tokenizer(d)
            if tokenizer_fingerprint(tok) != tokenizer_fingerprint(ref):
                raise UserError(f"the {who} at {d} uses a different tokenizer than {fallback}: distillation "
                                "compares token distributions, so teacher and student must share one; "
                                "prune the student from this teacher (or set model.tokenizer)")
    return ref
