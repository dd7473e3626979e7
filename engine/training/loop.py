"""The training recipe shared by `finetune` and `distill-<name>` (engine/training/stage_bodies.py
builds their models and calls `run_training`).

`TrainingRecipe.run` reads top to bottom: `resume` from the last checkpoint written with the same
settings, then `step` until cfg.steps, `validate` every val_interval steps, `checkpoint` every
checkpoint_interval steps, and `finish` writes model/. The models run on accelerate (DDP, or FSDP2
when [launch].strategy = "fsdp"); `Trainer.launch` (engine/training/step.py) queues one optimizer
step (micro-batches with gradient accumulation, global_batch_size = micro_batch_size x
accumulation x processes; clipping; the update) and the recipe reads each step's statistics one
step behind the GPU (`record`), so there is no host sync per step. SIGTERM/SIGINT: the launched
steps finish, a checkpoint is saved and Cancelled is raised. Metrics, TensorBoard, checkpoints and
model/ follow the run-directory contract (engine/contract/).

Precision: with mixed_precision = "bf16" on CUDA the student keeps fp32 master weights and
AdamW state; matrix products run in bf16. Where `master_weights` applies (engine/training/step.py), the
model itself is bf16 and the fp32 masters live in the optimizer (engine/training/master_adamw.py); else the
weights stay fp32 under autocast (DDP) or FSDP2's param_dtype. The student is loaded in fp32 either
way, so the masters start from the checkpoint's full precision. The frozen teacher is held in
[model].dtype. On the CPU everything is fp32.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from engine.config import TrainConfig
from engine.config.micro_batch import AUTO
from engine.contract import GIB
from engine.contract.cancelling import SAVING
from engine.contract.checkpoints import checkpoint_path, latest_checkpoint, list_checkpoints
from engine.contract.stage_context import StageContext
from engine.errors import Cancelled, UserError
from engine.training.batches import device_batches, validation_batches
from engine.training.checkpoint import (
    checkpoint_state,
    load_checkpoint,
    remove_checkpoints,
    resume_key,
    save_checkpoint,
)
from engine.training.checkpoint_check import SET_ASIDE, checkpoint_problem
from engine.training.memory_report import MemoryReport
from engine.training.metrics_log import MetricsLog
from engine.training.micro_batch import per_process_batch
from engine.training.models import Models
from engine.training.pending_step import PendingStep, StepResult
from engine.training.setup import CAP_ENV, cap_gpu_memory, lr_at, make_accelerator, peak_flops
from engine.training.step import Trainer
from engine.training.stop_flag import StopFlag
from engine.training.teacher_pass import TopKCache, TrackedWindows, fill_teacher_topk
from engine.training.throughput import Mark, StepTimes

STATUS_EVERY_S = 2.0  # status.json is fsync'ed: its step is refreshed at most this often


class TrainingDiverged(UserError):
    """Too many consecutive non-finite losses."""


@dataclass
class TrainState:
    """Where the run is: what a checkpoint's trainer_state.json holds and a resume restores."""

    step: int = 0
    samples: int = 0  # sequences consumed over all processes: the data position
    tokens: int = 0
    nan_steps: int = 0  # steps skipped for a non-finite loss or gradient
    resume_key: str = ""  # engine/training/checkpoint.py: resume_key
    micro_batch_size: int = 0  # the size trained with (what "auto" picked)


def run_training(ctx: StageContext, cfg: TrainConfig, section: str,
                 build: Callable[[bool, dict[str, Any]], Models]) -> None:
    """Train the models `build(cuda, meta)` returns on the stage's `section` ([finetune] or [distill])."""
    TrainingRecipe(ctx, cfg, section, build).run()


class TrainingRecipe:
    """One training stage: the models on accelerate, the state, and the loop's named parts."""

    def __init__(self, ctx: StageContext, cfg: TrainConfig, section: str,
                 build: Callable[[bool, dict[str, Any]], Models]):
        from accelerate.utils import set_seed

        from engine.data import read_meta

        self.ctx, self.cfg, self.section = ctx, cfg, section
        exp = ctx.exp
        models = build(torch.cuda.is_available(), read_meta(ctx.layout.data_dir))
        layer_classes = list(getattr(models.student, "_no_split_modules", None) or []) or None
        self.acc = make_accelerator(exp.launch.strategy, exp.launch.mixed_precision, layer_classes)
        if (cap := cap_gpu_memory(self.acc.device)) is not None:
            self._log(f"GPU memory capped at {cap:g} GiB ({CAP_ENV})")
        if exp.launch.strategy == "fsdp" and not self.acc.is_fsdp2 and self.acc.num_processes > 1:
            self._log("strategy fsdp needs GPUs (accelerate shards only CUDA models): using DDP")
        self.world, self.rank = self.acc.num_processes, self.acc.process_index
        per_process_batch(cfg, self.world, section)
        if cfg.micro_batch_size != AUTO and cfg.global_batch_size % (cfg.micro_batch_size * self.world):
            raise UserError(f"{section}.global_batch_size: {cfg.global_batch_size} is not a multiple of "
                            f"micro_batch_size x processes = {cfg.micro_batch_size} x {self.world}; "
                            "change one of them")
        self.seq = exp.data.seq_length
        self.tokens_per_step = cfg.global_batch_size * self.seq
        self.ckpt_root = ctx.layout.checkpoints_dir(ctx.stage)
        self.state = TrainState(resume_key=resume_key(exp, ctx.stage))
        set_seed(cfg.seed)
        self.topk: TopKCache | None = None
        if getattr(cfg, "teacher_logits", "live") == "cached":  # the teacher's top-k to disk, then off the GPU
            self.topk = fill_teacher_topk(ctx, cfg, self.acc, self.seq, models, self._log)  # (drops models.teacher)
        self.trainer = Trainer(self.acc, models.student, self._pinned_micro_batch(), models.spec, models.teacher,
                               models.hidden, seq_length=self.seq, log=self._log,
                               cached_top_k=self.topk.k if self.topk else None)
        self.state.micro_batch_size = self.trainer.micro
        # the trainer holds the models now; model/ needs the rest
        self.spec, self.hidden = models.spec, models.hidden
        self.tokenizer, self.save_dtype = models.tokenizer, models.save_dtype

        self.saved_at = -1  # the step of the checkpoint on disk (-1: none)
        self.good_at = -1  # the last checkpoint whose weights the next step trained from with a finite loss
        self.nan_run = 0  # consecutive non-finite steps
        self.cancel_seen = False  # a step's all-reduced statistics carried a stop request
        self.pending: list[tuple[int, PendingStep]] = []  # launched steps not read yet, oldest first
        self.metrics = MetricsLog(ctx)

    def _log(self, msg: str) -> None:
        self.ctx.log(f"[{self.ctx.stage}] {msg}")

    def _pinned_micro_batch(self) -> TrainConfig:
        """The config the trainer runs: with micro_batch_size "auto" and a checkpoint of these settings
        that recorded its size, that size (a resume repeats it instead of searching again)."""
        cfg = self.cfg
        found = latest_checkpoint(self.ckpt_root)
        if cfg.micro_batch_size != AUTO or found is None:
            return cfg
        saved = checkpoint_state(found[1])
        size = saved.get("micro_batch_size")
        if saved.get("resume_key") != self.state.resume_key or not isinstance(size, int) or size < 1:
            return cfg
        self._log(f"micro_batch_size auto: {size}, as in the checkpoint at step {found[0]}")
        return cfg.model_copy(update={"micro_batch_size": size})

    # ---- the recipe ----------------------------------------------------------------------

    def run(self) -> None:
        self.open()
        try:
            self.train()
        finally:
            self.metrics.close()
        self.finish()

    def open(self) -> None:
        """Resume, open the metrics and the data, say what will run."""
        resumed = self.resume()
        self.metrics.start(self.state.step if resumed else None)
        self._open_data()
        cfg = self.cfg
        self.ctx.progress(self.state.step, total_steps=cfg.steps, micro_batch_size=self.trainer.micro)
        self._log(f"{cfg.steps} steps x {cfg.global_batch_size} sequences x {self.seq} tokens "
                  f"({self.world} process(es), {self.trainer.accumulation} micro-batch(es) of "
                  f"{self.trainer.micro} each); loss {self.spec.kind}; "
                  f"{self.trainer.flops_per_token / 1e9:.2f} GFLOP/token; {self.trainer.precision}")
        self.memory = MemoryReport(self.ctx, self.acc.device, self._log)
        self.memory.predict(self.world, self.trainer.micro)

    def resume(self) -> bool:
        """Load the latest checkpoint if it was written with this stage's settings (RESUMABLE_CHANGES
        aside); checkpoints written with other settings are removed. Whether it resumed."""
        acc = self.acc
        found = self._intact_checkpoint()
        if found is not None and checkpoint_state(found[1]).get("resume_key") != self.state.resume_key:
            self._log(f"checkpoints in {self.ckpt_root} were written with other settings: starting afresh")
            acc.wait_for_everyone()
            if acc.is_main_process:
                remove_checkpoints(self.ckpt_root)
            acc.wait_for_everyone()
            found = None
        if found is None:
            return False
        t0 = time.perf_counter()
        try:
            loaded = load_checkpoint(acc, found[1])
        except UserError:
            raise
        except Exception as e:  # damage the framing check cannot see (a torch file's member): the model is
            # partly overwritten now, so this process cannot go on; the next run resumes from the one before
            aside = self._set_aside(found[1])
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise UserError(f"checkpoint {found[1]} could not be loaded ({type(e).__name__}: {first}); set aside "
                            f"as {aside.name}: run the stage again to resume from the checkpoint before it") from e
        micro = self.state.micro_batch_size
        self.state = TrainState(**{f.name: loaded[f.name] for f in fields(TrainState) if f.name in loaded})
        self.state.micro_batch_size = micro
        self.trainer.adopt_loaded_masters()
        self.saved_at = self.state.step
        seconds = round(time.perf_counter() - t0, 3)
        self.ctx.progress(self.state.step, resume_s=seconds)
        self._log(f"resumed from {found[1]} (step {self.state.step}) in {seconds:.1f} s")
        return True

    def _intact_checkpoint(self) -> tuple[int, Path] | None:
        """The latest checkpoint that is not damaged (engine/training/checkpoint_check.py). A damaged one is
        named in the log and set aside (renamed, never loaded again), and the one before it is tried."""
        damaged = False
        for step, path in reversed(list_checkpoints(self.ckpt_root)):
            problem = checkpoint_problem(path)
            if problem is None:
                return step, path
            damaged = True
            self._log(f"checkpoint {path} is damaged: {problem}; set aside as {SET_ASIDE}{path.name}, "
                      "trying the checkpoint before it")
            self._set_aside(path)
        if damaged:
            self._log("no intact checkpoint is left: the stage starts from step 0")
        return None

    def _set_aside(self, path: Path) -> Path:
        """Rename a damaged checkpoint out of the listing (kept to look at, never loaded); the new path."""
        aside = path.with_name(SET_ASIDE + path.name)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            shutil.rmtree(aside, ignore_errors=True)
            path.rename(aside)
        self.acc.wait_for_everyone()
        return aside

    def _open_data(self) -> None:
        """The training windows from the resumed position on, the fixed validation batches."""
        from engine.data import PackedDataset

        cfg, data_dir, device = self.cfg, self.ctx.layout.data_dir, self.acc.device
        per_rank_start = self.state.samples // self.world
        self.train_windows = TrackedWindows(PackedDataset(data_dir, "train", self.seq, cfg.seed, self.rank,
                                                          self.world), per_rank_start)
        self.val_batches = validation_batches(data_dir, self.seq, cfg, self.rank, self.world, device,
                                              self._log)
        self.peak = peak_flops(device)

    def train(self) -> None:
        """Steps up to cfg.steps, with validation and checkpoints on their intervals."""
        self.start_training()
        try:
            with StopFlag(self.ctx.status) as stop:
                while self.state.step < self.cfg.steps:
                    self.step(cancel=stop.signame is not None)
                    if self.cancel_seen:  # every rank sees it at the same step
                        raise Cancelled(stop.signame or "SIGTERM")
                    self.after_step()
        except Cancelled as e:
            self.save_cancelled()  # what the stage's status.json then says: nothing was lost
            raise Cancelled(f"{e} at step {self.saved_at}; its checkpoint is saved and `run` resumes from it") from None

    def start_training(self) -> None:
        """Before the first step: the clocks, and the validation loss at step 0 of a fresh run."""
        self.times = StepTimes(self.acc.device.type == "cuda", time.perf_counter)  # tokens/s
        self.status_at = 0.0  # when status.json's step was last written
        if self.state.step == 0:
            self.validate()
        if self.acc.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.acc.device)

    def after_step(self) -> None:
        """Validation and checkpoint when the step just taken is on their intervals."""
        cfg, step = self.cfg, self.state.step
        if step % cfg.val_interval == 0 or step == cfg.steps:
            self.validate()
        if step % cfg.checkpoint_interval == 0 and step < cfg.steps:
            self.checkpoint()

    def save_cancelled(self) -> None:
        """On a stop request: the launched steps finish, so the checkpoint holds their updates."""
        self.drain()
        if self.saved_at != self.state.step:
            self._log(f"cancelled: saving a checkpoint at step {self.state.step}")
            self.checkpoint()

    def step(self, cancel: bool = False) -> None:
        """Queue one optimizer step, then read the finished steps before it while it runs on the
        GPU (all of them at a validation or checkpoint boundary). `cancel`: ask every rank to stop."""
        start = self.times.start()
        batches = self.next_batches(self.train_windows)
        tops = self.topk.batches(self.train_windows.taken(), self.trainer.micro, self.acc.device) if self.topk else None
        self.launched(start, self.trainer.launch(batches, self.lr(), cancel=cancel, teacher_tops=tops))

    def next_batches(self, windows: Iterator[torch.Tensor]) -> list[torch.Tensor]:
        """One optimizer step's micro-batches from `windows`, on the device."""
        return device_batches(windows, self.trainer.accumulation, self.trainer.micro, self.acc.device)

    def lr(self) -> float:
        """The learning rate of the next step."""
        return lr_at(self.state.step, self.cfg)

    def launched(self, start: Mark, launched: PendingStep) -> None:
        """Book a step queued since `start` (StepTimes.start); read the finished ones before it."""
        cfg, state = self.cfg, self.state
        self.times.launched(state.step + 1, start)
        state.step += 1
        state.samples += cfg.global_batch_size
        state.tokens += self.tokens_per_step
        self.pending.append((state.step, launched))
        s = state.step
        boundary = s % cfg.val_interval == 0 or s % cfg.checkpoint_interval == 0 or s == cfg.steps
        self.drain(keep=0 if boundary else 1)

    def drain(self, keep: int = 0) -> None:
        """Read the launched steps' results (waiting for the GPU) until `keep` are left pending."""
        while len(self.pending) > keep:
            step, launched = self.pending.pop(0)
            self.record(step, launched.result())

    def record(self, step: int, res: StepResult) -> None:
        """Book-keeping of a finished step: the non-finite count, the stop request, metrics and log."""
        self.times.finished(step)
        self._count_nonfinite(step, res)
        self.cancel_seen |= res.cancel
        cfg = self.cfg
        if step % cfg.log_interval and step != cfg.steps:
            return
        now = time.perf_counter()
        tps = self.times.rate(self.tokens_per_step)
        device = self.acc.device
        rec = {"step": step, "tokens": step * self.tokens_per_step, "split": "train",
               "loss": res.loss if res.finite else float("nan"), "lr": lr_at(step - 1, cfg),
               "grad_norm": res.grad_norm, "tokens_per_s": tps,
               "mfu": (tps * self.trainer.flops_per_token / (self.peak * self.world)) if self.peak else None,
               "gpu_mem_gb": (torch.cuda.max_memory_allocated(device) / GIB
                              if device.type == "cuda" else None),
               "nan_steps": self.state.nan_steps}
        if self.spec.uses_teacher:
            rec.update(kd_loss=res.parts[0], ce_loss=res.parts[1])
            if self.hidden is not None:
                rec["hidden_loss"] = res.parts[2]
        self.metrics.write(rec)
        if now - self.status_at > STATUS_EVERY_S or step == cfg.steps:
            self.ctx.progress(step, total_steps=cfg.steps, step_s=self.times.step_s)
            self.status_at = now
        self._log(f"step {step}/{cfg.steps} loss {res.loss:.4f} lr {rec['lr']:.2e} "
                  f"grad {res.grad_norm:.3f} {tps:,.0f} tok/s")

    def _count_nonfinite(self, step: int, res: StepResult) -> None:
        """A non-finite step was skipped on the device; max_nan_steps in a row stop the run."""
        if res.finite:
            self.nan_run = 0
            if step == self.saved_at + 1:  # this step trained from the checkpoint's weights
                self.good_at = self.saved_at
            return
        self.state.nan_steps += 1
        self.nan_run += 1
        self._log(f"step {step}: non-finite loss/gradients ({res.loss}, grad norm {res.grad_norm}); "
                  f"update skipped ({self.nan_run} in a row)")
        if self.nan_run >= self.cfg.max_nan_steps:
            good = self._keep_good_checkpoint()
            where = f"{good} (step {self.good_at})" if good else "none written yet"
            raise TrainingDiverged(
                f"{self.ctx.stage}: the loss was not finite for {self.nan_run} consecutive steps (up to step "
                f"{step}); stopped. Last good checkpoint: {where}. Lower {self.section}.lr or raise "
                f"{self.section}.warmup_steps, then run the stage again to resume from it")

    def validate(self) -> None:
        """The student's loss on the fixed validation batches, logged at the current step."""
        if not self.val_batches:
            return
        step, t0 = self.state.step, time.perf_counter()
        loss = self.trainer.validate(self.val_batches)
        self.times.pause()
        self.metrics.write({"step": step, "tokens": self.state.tokens, "split": "val", "loss": loss})
        self._log(f"step {step}/{self.cfg.steps} val loss {loss:.4f}")
        # val_s: a stop request may land at a validation's start; a canceller's grace counts it in
        self.ctx.progress(step, total_steps=self.cfg.steps, val_s=round(time.perf_counter() - t0, 3))

    def checkpoint(self) -> None:
        """Save model, optimizer, RNG and the TrainState (collective)."""
        keep = checkpoint_path(self.ckpt_root, self.good_at) if self.good_at >= 0 else None
        step, t0 = self.state.step, time.perf_counter()
        # "saving" tells a canceller to wait for the write, however long it takes (contract/cancelling.py)
        self.ctx.progress(step, phase=SAVING, saving_step=step, step_s=self.times.step_s)
        try:
            save_checkpoint(self.acc, self.ckpt_root, step, asdict(self.state), keep=keep,
                            keep_last=self.cfg.keep_checkpoints, not_written=self.trainer.not_in_checkpoint)
        finally:
            self.ctx.progress(step, phase=None, saving_step=None)
        seconds = round(time.perf_counter() - t0, 3)
        self.ctx.progress(step, checkpoint_s=seconds)
        self._log(f"checkpoint of step {step} written in {seconds:.1f} s")
        self.saved_at = step
        self.times.pause()

    def _keep_good_checkpoint(self) -> Path | None:
        """After a blow-up: the last good checkpoint (see good_at); the later ones, written from weights
        that gave non-finite losses, are removed so that a rerun resumes from it."""
        if self.acc.is_main_process:
            for step, path in list_checkpoints(self.ckpt_root):
                if step > self.good_at:
                    shutil.rmtree(path, ignore_errors=True)
        return checkpoint_path(self.ckpt_root, self.good_at) if self.good_at >= 0 else None

    def finish(self) -> None:
        """model/ = a stock HF checkpoint of the student in [model].dtype, with the tokenizer; the
        checkpoints go (the stage is complete)."""
        from engine.models.hf import save_model
        from engine.training.stock_model import stock_model

        self.memory.measured(self.state.step)
        acc = self.acc
        # A stop request now is not obeyed mid-write: the model is saved, the stage succeeds, and a
        # canceller waits for the write as for a checkpoint's ("saving").
        with StopFlag(self.ctx.status):
            self.ctx.progress(self.state.step, phase=SAVING, saving_step=self.state.step, saving_what="the model")
            state = self.trainer.full_student_state()  # collective under FSDP
            if acc.is_main_process:
                model = stock_model(self.trainer.unwrapped().student.config, state, self.save_dtype)
                self._log(f"saved {save_model(model, self.ctx.layout.model_dir(self.ctx.stage), self.tokenizer)}")
            acc.wait_for_everyone()
            if acc.is_main_process:
                remove_checkpoints(self.ckpt_root)
            acc.wait_for_everyone()
            self.ctx.progress(self.state.step, phase=None, saving_step=None, saving_what=None)

