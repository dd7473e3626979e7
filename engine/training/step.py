"""One optimizer step on accelerate: the Trainer that the training recipe (engine/training/loop.py)
and the benchmark drive.

`Trainer` (set up by engine/training/setup.py) holds the
wrapped student (+ loss), the frozen teacher and the optimizer (fused AdamW, or MasterAdamW over a
bf16 student where `master_weights_apply`), and `launch` queues one optimizer step (micro-batches,
gradient accumulation, clipping, finite check) without a host sync.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.config import TrainConfig
from engine.distill.losses import LossSpec
from engine.distill.objective import (
    HiddenSpec,
    Teacher,
    TeacherOutputs,
    TrainModule,
    decoder_layers,
    matmul_params,
    output_weight,
)
from engine.models.attention import use_causal_sdpa
from engine.models.float8 import use_float8
from engine.training.master_adamw import MasterAdamW
from engine.training.micro_batch import bf16_parameters, pick_micro_batch
from engine.training.pending_step import PendingStep, StepResult
from engine.training.recompute import checkpoint_layers
from engine.training.setup import make_optimizer, master_weights_apply

# ---- one optimizer step ----------------------------------------------------------------


def _inner_optimizer(opt: Any) -> torch.optim.Optimizer:
    while hasattr(opt, "optimizer"):  # accelerate's AcceleratedOptimizer wraps the torch one
        opt = opt.optimizer
    return opt


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor: an FSDP2 DTensor (a norm over sharded gradients) reduced over the ranks."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _compile_layers(model: nn.Module) -> None:
    """torch.compile each decoder layer (all layers share one compiled graph per grad mode).

    Measured on an H200 (benchmarks/RESULTS.md): per layer beats one graph for the whole decoder
    stack by 14% (the whole-stack graph made cuDNN attention 3x slower), and it works under FSDP2,
    whose hooks sit on the layers."""
    for layer in decoder_layers(model):
        layer.compile()


def shared_teacher(accelerator: Any, model: nn.Module, hiddens: list[HiddenSpec | None],
                   compile_: bool = False, float8: bool = False) -> Teacher:
    """The frozen teacher on the accelerator's device (sharded layer by layer under FSDP2), keeping
    the layer outputs that any of `hiddens` (one per student it teaches) maps to; `float8`: its decoder
    layers' matmuls in float8 (engine/models/float8.py)."""
    layers = sorted({t for h in hiddens if h is not None and h.weight > 0 for _, t in h.layer_map})
    use_causal_sdpa(model)
    if float8:
        use_float8(model, accelerator.device, "teacher")
    if compile_:
        _compile_layers(model)
    teacher = Teacher(model, layers or None)
    teacher.to(accelerator.device)
    teacher.freeze_head()
    if accelerator.is_fsdp2:
        # Shard the frozen teacher layer by layer; its output weight stays whole on every
        # rank because the fused KD loss reads it outside the teacher's forward.
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=teacher.head.dtype)
        for layer in decoder_layers(teacher.model):
            fully_shard(layer, mp_policy=mp, reshard_after_forward=True)
        fully_shard(teacher, mp_policy=mp, ignored_params={output_weight(teacher.model)})
    return teacher


class Trainer:
    """The wrapped student (+ loss), the teacher and the optimizer; `step` is one optimizer step.

    The benchmark (benchmarks/distill_throughput.py) drives this same class.
    """

    def __init__(self, accelerator: Any, student: nn.Module, cfg: TrainConfig, spec: LossSpec,
                 teacher: nn.Module | Teacher | None = None, hidden: HiddenSpec | None = None,
                 master_weights: bool | str | None = None,  # None: cfg.master_weights where it applies
                 seq_length: int | None = None, log: Callable[[str], None] = lambda _msg: None,
                 cached_top_k: int | None = None):
        """`seq_length` (tokens per window, without the label shift): what a micro_batch_size "auto"
        search tries (engine/training/micro_batch.py; without it "auto" is `fixed_micro_batch`);
        `log` says what it picked. `teacher`: the teacher model, or a `Teacher` that `shared_teacher`
        made for several students (engine/training/shared_teacher.py), used as it is. `cached_top_k`: no
        teacher here; each micro-batch comes with the teacher's stored top-k logits of this width
        (engine/distill/teacher_topk.py)."""
        self.accelerator = accelerator
        self.cfg = cfg
        self.spec = spec
        self.cached_top_k = cached_top_k
        device = accelerator.device
        compile_ = bool(cfg.compile) and device.type == "cuda"
        float8 = cfg.float8
        if float8:  # before checkpointing and compile wrap the layers
            swapped = use_float8(student, device, "student")
            log(f"float8 matmuls in {swapped} of the student's projections (and in the teacher's)")
        if cfg.gradient_checkpointing:
            checkpoint_layers(student, cfg.gradient_checkpointing)
        use_causal_sdpa(student)  # batches are packed windows without padding
        if compile_:
            _compile_layers(student)
        self.flops_per_token = 6 * matmul_params(student)
        self.teacher: Teacher | None = None
        self._own_teacher = teacher is not None and not isinstance(teacher, Teacher)  # release() unhooks it
        if isinstance(teacher, Teacher):
            self.teacher = teacher
        elif teacher is not None:
            self.teacher = shared_teacher(accelerator, teacher, [hidden], compile_, float8)
        if self.teacher is not None:
            self.flops_per_token += 2 * matmul_params(self.teacher.model)
        t_width = self.teacher.model.config.hidden_size if self.teacher is not None else None
        module = TrainModule(student, spec, hidden, t_width, compile_loss=compile_)
        self.flops_per_token += 6 * sum(matmul_params(p) for p in module.projections)
        module.to(device)
        self.micro = self._micro_batch(module, master_weights, seq_length, log)
        if self.teacher is not None and getattr(cfg, "teacher_cuda_graph", False):
            self._graph_teacher(log)
        # micro-batches per optimizer step: global_batch_size = micro x this x processes
        self.accumulation = max(1, cfg.global_batch_size // (self.micro * accelerator.num_processes))
        if master_weights is None:
            applies = cfg.master_weights is not False and master_weights_apply(accelerator, self.accumulation)
            master_weights = cfg.master_weights if applies else False
        self.master = bool(master_weights)  # bf16 parameters in MasterAdamW (with or without fp32 copies)
        self.stochastic = master_weights == "stochastic"  # no fp32 copies: stochastic rounding
        if self.master and self.accumulation > 1 and accelerator.num_processes > 1:
            raise ValueError("master weights with gradient accumulation need a single process")
        if cfg.optimizer_states != "float32" and accelerator.is_fsdp2:  # (check refuses it first)
            raise ValueError(f"optimizer_states = {cfg.optimizer_states!r} is not available under FSDP")
        optimizer = make_optimizer(module, cfg, master=master_weights)
        self.module, self.optimizer = accelerator.prepare(module, optimizer)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        # the handles: the accelerator's hooks hold this Trainer (its models and optimizer) until removed
        self.hooks = [accelerator.register_load_state_pre_hook(self._load_weights_in_masters)]
        if self.has_masters:
            self.hooks.append(accelerator.register_save_state_pre_hook(self._weights_in_masters))

    def release(self) -> None:
        """Unhook from the accelerator, so that another Trainer on it does not keep this one's memory, and the
        Teacher this Trainer made from the caller's model from that model (a shared Teacher is its maker's)."""
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
        if self._own_teacher and self.teacher is not None:
            self.teacher.release()

    # A checkpoint of a run with master weights keeps no bf16 copy of the trained weights, which the fp32
    # masters in the optimizer's state determine: 2 of its 10-14 bytes per parameter (8.4 GiB of a 4.5B
    # student's 42). The parameters are restored from the masters (MasterAdamW.load_state_dict, or
    # adopt_loaded_masters in a run without them). Only where the accelerator holds this one model: its
    # files are numbered by position. With master_weights = "stochastic" there are no masters: the model
    # file keeps the bf16 weights, the only copy.

    @property
    def has_masters(self) -> bool:
        """fp32 master copies in the optimizer (master weights, not stochastic rounding)."""
        return self.master and not self.stochastic

    @property
    def not_in_checkpoint(self) -> list[Any]:
        """The tensors the save hook leaves out (the masters hold them): for the free-space estimate."""
        return self.params if self.has_masters else []

    def _weights_in_masters(self, models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
        """accelerate's save hook: the model file without the tensors the masters hold."""
        from engine.training.checkpoint import MASTERS_ONLY

        if len(models) != 1 or models[0] is not self.module:
            return
        held = {p.data_ptr() for p in self.params}
        weights[0] = {k: v for k, v in weights[0].items() if v.data_ptr() not in held}
        if self.accelerator.is_main_process:
            (Path(output_dir) / MASTERS_ONLY).write_text('{"weights": "optimizer masters"}\n')

    def _load_weights_in_masters(self, models: list[Any], input_dir: str) -> None:
        """accelerate's load hook: such a model file is loaded non-strictly here, and skipped there."""
        from safetensors.torch import load_model

        from engine.training.checkpoint import MASTERS_ONLY

        if len(models) != 1 or models[0] is not self.module or not (Path(input_dir) / MASTERS_ONLY).exists():
            return
        missing, unexpected = load_model(self.module, Path(input_dir) / "model.safetensors", strict=False,
                                         device=str(self.accelerator.device))
        held = {id(p) for p in self.params}
        named = dict(self.module.named_parameters())
        stray = [k for k in missing if k in named and id(named[k]) not in held] + list(unexpected)
        if stray:
            raise RuntimeError(f"{input_dir}: the model file does not match this model ({stray[:3]})")
        models.clear()

    def _graph_teacher(self, log: Callable[[str], None]) -> None:
        """From here on (the micro-batch search is over) the teacher's forward replays as a CUDA graph."""
        acc = self.accelerator
        if acc.device.type != "cuda" or acc.is_fsdp2:
            log(f"teacher_cuda_graph: off ({'no CUDA device' if acc.device.type != 'cuda' else 'under FSDP'})")
            return
        graphed = self.teacher.use_cuda_graphs(log)
        log(f"teacher_cuda_graph: the teacher's forward replays as a CUDA graph after {graphed.warmup_calls} "
            "warm-up calls")

    def _micro_batch(self, module: TrainModule, master_weights: bool | str | None, seq: int | None,
                     log: Callable[[str], None]) -> int:
        """cfg.micro_batch_size, or for "auto" the largest that fits (engine/training/micro_batch.py)."""
        cfg = self.cfg
        mode = cfg.master_weights if master_weights is None else master_weights
        # with one micro-batch a step: the search does not know the accumulation yet
        may = cfg.master_weights is not False and mode is not False and master_weights_apply(self.accelerator, 1)
        n = sum(p.numel() for p in module.parameters() if p.requires_grad)
        return pick_micro_batch(cfg, self.accelerator, n, seq, mode if may else False,
                                lambda m, reserve, as_bf16: self.fits(module, m, seq, reserve, as_bf16), log)

    def fits(self, module: TrainModule, size: int, seq: int, reserve_bytes: int = 0, as_bf16: bool = False) -> None:
        """One forward and backward of a micro-batch of `size` windows of `seq` tokens (+1 label),
        eager, with `reserve_bytes` held aside on CUDA; raises the device's out-of-memory error when
        it does not fit. `as_bf16`: on bf16 copies of the fp32 parameters (as master weights train).
        Leaves the weights, the gradients (None) and the random state as they were."""
        device = self.accelerator.device
        cuda = device.type == "cuda"
        vocab = output_weight(module.student).shape[0]
        if self.teacher is not None:
            vocab = min(vocab, self.teacher.head.shape[0])
        top = None
        with (bf16_parameters(module) if as_bf16 else nullcontext(),
              torch.random.fork_rng(devices=[device] if cuda else []), torch.compiler.set_stance("force_eager")):
            reserve = torch.empty(reserve_bytes, dtype=torch.uint8, device=device) if cuda else None
            try:
                batch = (torch.arange(size * (seq + 1), device=device) % vocab).view(size, seq + 1)
                if self.cached_top_k:  # stand-ins of the stored top-k's shapes
                    k = self.cached_top_k
                    ids = (torch.arange(size * seq * k, device=device) % vocab).view(size, seq, k)
                    top = (torch.zeros(size, seq, k, device=device, dtype=output_weight(module.student).dtype), ids)
                loss, _ = self._forward(batch, module, teacher_top=top)
                loss.backward()
                if cuda:
                    torch.cuda.synchronize(device)
            finally:
                for p in module.parameters():
                    p.grad = None
                del reserve

    def unwrapped(self) -> TrainModule:
        return self.accelerator.unwrap_model(self.module)

    def teacher_outputs(self, batch: torch.Tensor) -> TeacherOutputs:
        """The teacher's last hidden state and mapped layer outputs for a micro-batch [B, seq+1]."""
        assert self.teacher is not None
        with self.accelerator.autocast():
            return self.teacher(batch[:, :-1])

    def _forward(self, batch: torch.Tensor, module: nn.Module | None = None,
                 teacher_out: TeacherOutputs | None = None, teacher_top: Any = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        module = self.module if module is None else module
        if self.teacher is not None and teacher_out is None:
            teacher_out = self.teacher_outputs(batch)
        inputs, labels = batch[:, :-1], batch[:, 1:]
        with self.accelerator.autocast():
            if teacher_top is not None:
                return module(inputs, labels, teacher_top=teacher_top)
            if teacher_out is not None:
                t_hidden, t_layers = teacher_out
                return module(inputs, labels, t_hidden, self.teacher.head, t_layers)
            return module(inputs, labels)

    def launch(self, micro_batches: list[torch.Tensor], lr: float, cancel: bool = False,
               teacher_tops: list[Any] | None = None) -> PendingStep:
        """One optimizer step, queued without a host sync: forward/backward over the micro-batches,
        clip, then fused AdamW, which skips the update on the device when the loss or the gradients
        are not finite (`found_inf`). The statistics are all-reduced so that every rank later takes
        the same decision (count a skipped step, stop on SIGTERM) at the same step. `teacher_tops`: the
        stored teacher top-k of each micro-batch (a Trainer built with `cached_top_k`)."""
        if self.cached_top_k and (teacher_tops is None or len(teacher_tops) != len(micro_batches)):
            raise ValueError("a Trainer with cached_top_k needs the teacher's top-k of every micro-batch")
        self.begin(lr)
        for i, batch in enumerate(micro_batches):
            self.accumulate(batch, i, len(micro_batches), teacher_top=teacher_tops[i] if teacher_tops else None)
        return self.end(cancel)

    # `launch` in three parts, for a caller that interleaves several students over one teacher
    # forward per micro-batch (engine/training/shared_teacher.py)

    def begin(self, lr: float) -> None:
        """Start an optimizer step at learning rate `lr`."""
        self.module.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._sums = torch.zeros(4, device=self.accelerator.device)  # loss, kd, ce, hidden (means)

    def accumulate(self, batch: torch.Tensor, i: int, n: int, teacher_out: TeacherOutputs | None = None,
                   teacher_top: Any = None) -> None:
        """Forward and backward of micro-batch `i` of `n`; `teacher_out`: the teacher's outputs for
        it, when computed once for several students (else the teacher runs here); `teacher_top`: its
        stored top-k logits instead."""
        acc = self.accelerator
        with nullcontext() if i == n - 1 else acc.no_sync(self.module):
            loss, parts = self._forward(batch, teacher_out=teacher_out, teacher_top=teacher_top)
            acc.backward(loss / n)
        if self.master and n > 1:
            self._master().accumulate()  # fp32 sums, not bf16 ones
        self._sums += torch.cat([loss.detach().float().reshape(1), parts]) / n

    def end(self, cancel: bool = False) -> PendingStep:
        """Clip and update; the step's statistics (see `launch`)."""
        acc = self.accelerator
        sums = self._sums
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
            return _full(acc.clip_grad_norm_(self.params, max_norm))
        if self.master:  # bf16 gradients (or their fp32 sums): the norm in fp32
            norms = torch._foreach_norm(self._master().gradients(), 2.0, dtype=torch.float32)
            norm = torch.linalg.vector_norm(torch.stack(norms))
        else:
            norm = _full(torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None],
                                                       foreach=True))
        # scale = 1 / clip_grad_norm_'s coefficient max_norm / (norm + 1e-6), at least 1
        _inner_optimizer(self.optimizer).grad_scale = ((norm.float() + 1e-6) / max_norm).clamp(min=1.0)
        return norm

    @property
    def precision(self) -> str:
        """How the student's weights are held, for the log."""
        acc = self.accelerator
        moments = {"float32": "", "bfloat16": ", bf16 Adam moments", "int8": ", 8-bit Adam moments"}[
            self.cfg.optimizer_states]
        if self.stochastic:
            return "bf16 weights, stochastic rounding, no fp32 masters" + moments
        if self.master:
            return "bf16 weights rounded stochastically from fp32 master weights in the optimizer" + moments
        if acc.mixed_precision in ("bf16", "fp16"):
            return (f"fp32 weights, {acc.mixed_precision} compute" + (" (FSDP2)" if acc.is_fsdp2 else " (autocast)")
                    + moments)
        return f"{next(iter(self.params)).dtype} weights".replace("torch.", "") + moments

    def adopt_loaded_masters(self) -> None:
        """After loading a checkpoint written with master weights into plain AdamW (this run does
        not use them, e.g. DDP with accumulation): the model file holds bf16 copies, the optimizer
        state the fp32 masters, so the parameters take the masters."""
        if self.master or self.accelerator.is_fsdp2:
            return
        opt = _inner_optimizer(self.optimizer)
        with torch.no_grad():
            for p in self.params:
                master = opt.state.get(p, {}).pop("master", None)
                if master is not None:
                    p.copy_(master.to(p.device, p.dtype))

    def _master(self) -> MasterAdamW:
        return _inner_optimizer(self.optimizer)

    def step(self, micro_batches: list[torch.Tensor], lr: float, cancel: bool = False,
             teacher_tops: list[Any] | None = None) -> StepResult:
        """`launch` and wait for its result (tests, simple callers)."""
        return self.launch(micro_batches, lr, cancel, teacher_tops).result()

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
        if self.has_masters:  # the fp32 masters, not their bf16 copies
            masters = self._master().master_weights()
            named = self.unwrapped().named_parameters(remove_duplicate=False)
            state = {**state, **{name: masters[p] for name, p in named if p in masters}}
        prefix = "student."
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
