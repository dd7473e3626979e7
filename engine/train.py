"""The one training loop: `finetune` (next-token loss) and `distill-<name>` (student learns from teacher).

Read top to bottom: `finetune_stage` / `distill_stage` build the models, `run_training` wraps them
on accelerate (DDP, or FSDP2 when [launch].strategy = "fsdp"), resumes from the last checkpoint,
then loops over optimizer steps: `Trainer.step` runs the micro-batches (gradient accumulation,
global_batch_size = micro_batch_size x accumulation x processes), clips, checks that the loss is
finite (the one host sync of a step) and updates. Validation, metrics, TensorBoard, checkpoints
and the final HF checkpoint follow the run-directory contract (engine/runs.py).

Precision: with mixed_precision = "bf16" on CUDA the student keeps fp32 master weights and
AdamW state; matrix products run in bf16 (autocast under DDP, FSDP2's param_dtype under FSDP).
The frozen teacher is held in [model].dtype. On the CPU everything is fp32.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.attention import restore_sdpa, use_causal_sdpa
from engine.checkpoint import latest_checkpoint, load_checkpoint, remove_checkpoints, save_checkpoint
from engine.config import DistillConfig, Experiment, TrainConfig, stage_student
from engine.distill.losses import LossSpec
from engine.distill.objective import (
    HiddenSpec,
    Teacher,
    TrainModule,
    decoder_layers,
    default_layer_map,
    matmul_params,
    output_weight,
)
from engine.runs import append_metrics, tokenizer_source, truncate_metrics_after
from engine.stage import Cancelled, StageContext, UserError, has_checkpoint, teacher_checkpoint

# Trainer keys that may change between a checkpoint and its resume (a run that diverged can be
# resumed with a lower lr); any other change of the stage's inputs starts the stage afresh.
RESUMABLE_CHANGES = ("steps", "lr", "min_lr", "warmup_steps", "grad_clip", "val_interval", "val_batches",
                     "checkpoint_interval", "log_interval", "max_nan_steps", "compile", "gradient_checkpointing")

# Tokens per chunk of the fused next-token loss when fine-tuning ([distill].chunk_tokens for KD).
CE_CHUNK_TOKENS = 2048

# Dense bf16 tensor-core peak per GPU, for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "GH200": 989e12, "B200": 2250e12,
              "A100": 312e12, "A800": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 125e12}


class TrainingDiverged(UserError):
    """Too many consecutive non-finite losses."""


# ---- accelerate ------------------------------------------------------------------------


def make_accelerator(strategy: str = "ddp", mixed_precision: str = "bf16",
                     layer_classes: list[str] | None = None) -> Any:
    """An Accelerator: bf16 autocast + DDP, or FSDP2 configured here (no accelerate config file)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cuda = torch.cuda.is_available()
    mp = mixed_precision if cuda else "no"
    kwargs: dict[str, Any] = {}
    if strategy == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate.utils import FullyShardedDataParallelPlugin

        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp)
        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=layer_classes,
            reshard_after_forward=True,
            state_dict_type="SHARDED_STATE_DICT",
            cpu_ram_efficient_loading=False,
            # bf16 compute, fp32 gradient reduction and fp32 loss out of the root module
            mixed_precision_policy=({"param_dtype": half, "reduce_dtype": torch.float32,
                                     "output_dtype": torch.float32} if half else None),
        )
    else:
        kwargs["kwargs_handlers"] = [DistributedDataParallelKwargs(gradient_as_bucket_view=True)]
    return Accelerator(mixed_precision=mp, cpu=not cuda, **kwargs)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_FLOPS[key]
    return None


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to lr over warmup_steps, then cosine decay to min_lr at the last step."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Fused AdamW (CUDA and CPU); no weight decay on norms and biases (1-D parameters).

    Fused, because it can skip a step on the device (`found_inf`) without a host sync."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=1e-8, fused=True)


# ---- one optimizer step ----------------------------------------------------------------


@dataclass
class StepResult:
    loss: float
    parts: list[float]  # kd, ce, hidden
    grad_norm: float
    finite: bool
    cancel: bool


class PendingStep:
    """The statistics of a launched step, copied to the host without stopping the GPU.

    `result()` waits only for this step's work (a CUDA event), so the loop can launch step
    i+1 before it reads step i: the GPU never idles on a host sync between steps.
    """

    def __init__(self, stats: torch.Tensor):
        self.event = None
        if stats.is_cuda:
            self.host = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)
            self.host.copy_(stats, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = stats

    def result(self) -> StepResult:
        if self.event is not None:
            self.event.synchronize()
        v = self.host.tolist()
        finite = all(math.isfinite(x) for x in v[:5])
        return StepResult(v[0], v[1:4], v[4], finite, v[5] > 0)


def _inner_optimizer(opt: Any) -> torch.optim.Optimizer:
    while hasattr(opt, "optimizer"):  # accelerate's AcceleratedOptimizer wraps the torch one
        opt = opt.optimizer
    return opt


def _compile_layers(model: nn.Module) -> None:
    """torch.compile each decoder layer (all layers share one compiled graph per grad mode).

    Measured on an H200 (benchmarks/RESULTS.md): per layer beats one graph for the whole decoder
    stack by 14% (the whole-stack graph made cuDNN attention 3x slower), and it works under FSDP2,
    whose hooks sit on the layers."""
    for layer in decoder_layers(model):
        layer.compile()


class Trainer:
    """The wrapped student (+ loss), the teacher and the optimizer; `step` is one optimizer step.

    The benchmark (benchmarks/distill_throughput.py) drives this same class.
    """

    def __init__(self, accelerator: Any, student: nn.Module, cfg: TrainConfig, spec: LossSpec,
                 teacher: nn.Module | None = None, hidden: HiddenSpec | None = None):
        self.accelerator = accelerator
        self.cfg = cfg
        self.spec = spec
        device = accelerator.device
        compile_ = bool(cfg.compile) and device.type == "cuda"
        if cfg.gradient_checkpointing:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        capture = sorted({t for _, t in hidden.layer_map}) if hidden and hidden.weight > 0 else None
        for model in (student, teacher):  # batches are packed windows without padding
            if model is not None:
                use_causal_sdpa(model)
        if compile_:
            _compile_layers(student)
        self.flops_per_token = 6 * matmul_params(student)
        self.teacher: Teacher | None = None
        if teacher is not None:
            if compile_:
                _compile_layers(teacher)
            self.teacher = self._place_teacher(Teacher(teacher, capture))
            self.flops_per_token += 2 * matmul_params(teacher)
        module = TrainModule(student, spec, hidden, teacher.config.hidden_size if teacher is not None else None,
                             compile_loss=compile_)
        self.flops_per_token += 6 * sum(matmul_params(p) for p in module.projections)
        module.to(device)
        optimizer = make_optimizer(module, cfg)
        self.module, self.optimizer = accelerator.prepare(module, optimizer)
        self.params = [p for p in self.module.parameters() if p.requires_grad]

    def _place_teacher(self, teacher: Teacher) -> Teacher:
        acc = self.accelerator
        teacher.to(acc.device)
        teacher.freeze_head()
        if acc.is_fsdp2:
            # Shard the frozen teacher layer by layer; its output weight stays whole on every
            # rank because the fused KD loss reads it outside the teacher's forward.
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            mp = MixedPrecisionPolicy(param_dtype=teacher.head.dtype)
            for layer in decoder_layers(teacher.model):
                fully_shard(layer, mp_policy=mp, reshard_after_forward=True)
            fully_shard(teacher, mp_policy=mp, ignored_params={output_weight(teacher.model)})
        return teacher

    def unwrapped(self) -> TrainModule:
        return self.accelerator.unwrap_model(self.module)

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = batch[:, :-1], batch[:, 1:]
        with self.accelerator.autocast():
            if self.teacher is not None:
                t_hidden, t_layers = self.teacher(inputs)
                return self.module(inputs, labels, t_hidden, self.teacher.head, t_layers)
            return self.module(inputs, labels)

    def launch(self, micro_batches: list[torch.Tensor], lr: float, cancel: bool = False) -> PendingStep:
        """One optimizer step, queued without a host sync: forward/backward over the micro-batches,
        clip, then fused AdamW, which skips the update on the device when the loss or the gradients
        are not finite (`found_inf`). The statistics are all-reduced so that every rank later takes
        the same decision (count a skipped step, stop on SIGTERM) at the same step."""
        acc = self.accelerator
        self.module.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n = len(micro_batches)
        sums = torch.zeros(4, device=acc.device)  # loss, kd, ce, hidden (means over micro-batches)
        for i, batch in enumerate(micro_batches):
            sync = i == n - 1
            with nullcontext() if sync else acc.no_sync(self.module):
                loss, parts = self._forward(batch)
                acc.backward(loss / n)
            sums += torch.cat([loss.detach().float().reshape(1), parts]) / n
        grad_norm = self._clip()
        stats = torch.cat([sums, grad_norm.detach().float().reshape(1).to(sums.device),
                           torch.full((1,), float(cancel), device=sums.device)])
        if acc.num_processes > 1:
            stats = acc.reduce(stats, reduction="sum")
            stats = torch.cat([stats[:5] / acc.num_processes, stats[5:]])
        if acc.scaler is None:  # (fp16's GradScaler sets found_inf itself)
            _inner_optimizer(self.optimizer).found_inf = (~torch.isfinite(stats[:5]).all()).float()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return PendingStep(stats)

    def _clip(self) -> torch.Tensor:
        """The gradients' global norm, with clipping to `grad_clip` left to the fused AdamW step:
        its `grad_scale` divides each gradient as it reads it, which saves a read-and-write pass
        over all gradients (fp16's GradScaler owns `grad_scale`, so there accelerate clips)."""
        acc = self.accelerator
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        if acc.scaler is not None:
            norm = acc.clip_grad_norm_(self.params, max_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None], foreach=True)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        if acc.scaler is None:  # scale = 1 / clip_grad_norm_'s coefficient
            _inner_optimizer(self.optimizer).grad_scale = ((norm.float() + 1e-6) / max_norm).clamp(min=1.0)
        return norm

    def step(self, micro_batches: list[torch.Tensor], lr: float, cancel: bool = False) -> StepResult:
        """`launch` and wait for its result (tests, simple callers)."""
        return self.launch(micro_batches, lr, cancel).result()

    @torch.no_grad()
    def validate(self, batches: list[torch.Tensor]) -> float:
        """Mean next-token loss of the student over `batches` (this rank's), averaged over ranks."""
        acc = self.accelerator
        self.module.eval()
        total = torch.zeros((), device=acc.device)
        for batch in batches:
            inputs, labels = batch[:, :-1], batch[:, 1:]
            with acc.autocast():
                loss, parts = self.module(inputs, labels, ce_only=True)
            total += loss.float()
        total = total / max(1, len(batches))
        if acc.num_processes > 1:
            total = acc.reduce(total, reduction="mean")
        self.module.train()
        return float(total)

    def full_student_state(self) -> dict[str, torch.Tensor]:
        """The student's full state dict (gathered under FSDP); complete on the main process."""
        state = self.accelerator.get_state_dict(self.module)
        prefix = "student."
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


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
    accum = cfg.global_batch_size // (cfg.micro_batch_size * world)
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
        from engine.runs import read_json

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
            f"({world} process(es), {accum} micro-batch(es) of {cfg.micro_batch_size} each); "
            f"loss {models.spec.kind}; {trainer.flops_per_token / 1e9:.2f} GFLOP/token")

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
                batches = _sample_batches(train_it, accum, cfg.micro_batch_size, acc.device)
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

    from engine.modeling import save_model, torch_dtype

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
        from engine.modeling import build_scratch_model, load_model, load_tokenizer

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
        from engine.modeling import load_model

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
    from engine.modeling import load_tokenizer

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
