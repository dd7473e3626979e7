"""Validation loss / perplexity / parameter count / forward speed of every model of a run.

`evaluate_loss` is the one loss measurement (the training loop's validation, "loss after
pruning" and the eval stage all use it or the same fused loss). `eval_stage` evaluates the
teacher, each pruned student and each distilled student on every split of [eval].splits and
writes `<run>/eval/results.json`, read by `compare` and the TUI:

    {
      "models": {
        "teacher":        {"params": 1235814400, "path": "runs/x/finetune/model",
                           "tokens_per_s": 51234.0,
                           "splits": {"validation": {"loss": 2.31, "perplexity": 10.07, "tokens": 409600},
                                      "test":       {"loss": 2.35, "perplexity": 10.49, "tokens": 409600}}},
        "prune-depth":    {...same keys...},
        "distill-depth":  {...same keys...}
      },
      "seq_length": 2048,
      "updated_at": "2026-11-27T10:00:00+00:00"
    }

Model names are "teacher", "prune-<name>", "distill-<name>", in pipeline order; a model whose
checkpoint does not exist yet is left out (and named in the log). `params` counts unique
parameters (tied embeddings once); `loss` is the mean next-token cross-entropy in nats over
`tokens` predicted tokens; `perplexity` = exp(loss); `tokens_per_s` is the forward throughput
measured during the evaluation (one process, the eval micro-batch size). A split that was not
prepared (or is too small for one window) is left out of "splits".
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.contract import now_iso, teacher_source, write_json
from engine.distill.losses import LossSpec, fused_linear_loss
from engine.distill.objective import base_model, output_weight
from engine.errors import UserError
from engine.models.attention import use_causal_sdpa
from engine.orchestration.stage_process import StageContext, has_checkpoint

_CE = LossSpec("ce", chunk_tokens=4096)


def batch_plan(samples: int, batches: int | None, micro_batch_size: int) -> tuple[int, int]:
    """(count, size) of the micro-batches read from a split of `samples` windows: at most
    `batches` (None: the whole split), at least one, none larger than the split."""
    available = max(1, samples // micro_batch_size)
    count = available if batches is None else min(batches, available)
    return count, min(micro_batch_size, samples)


def _batches(data: Any, batches: int | None, micro_batch_size: int) -> Iterable[Any]:
    """Micro-batches [B, seq+1] from a PackedDataset-like object or an iterable of batches."""
    if hasattr(data, "batches") and hasattr(data, "__len__"):
        count, micro = batch_plan(len(data), batches, micro_batch_size)
        it = data.batches(micro, start=0)
        return (next(it) for _ in range(count))
    if batches is None:
        return data
    return itertools.islice(data, batches)


@torch.no_grad()
def lm_loss_sum(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy (fp32) of `model` on ids [B, T] with labels [B, T].

    The one LM-loss computation (evaluation here, LM-loss layer scores in
    engine.prune.importance): chunked and fused with the output projection, so the fp32
    logits of the whole batch are never materialised.
    """
    h = base_model(model)(input_ids=ids, use_cache=False).last_hidden_state
    loss, _, _ = fused_linear_loss(h.flatten(0, 1), output_weight(model), labels.flatten(), _CE)
    return loss.float() * labels.numel()


@torch.no_grad()
def lm_loss_sums(model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
    """(sum of next-token losses, number of predicted tokens) for one batch of windows."""
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(batch) if not isinstance(batch, torch.Tensor) else batch)
    x = x.to(device=device, dtype=torch.long)
    if x.ndim == 1:
        x = x.unsqueeze(0)
    inputs, labels = x[:, :-1], x[:, 1:]
    return lm_loss_sum(model, inputs, labels), labels.numel()


@torch.no_grad()
def evaluate_loss(model: nn.Module, dataset_or_batches: Any, batches: int | None = None,
                  micro_batch_size: int = 4, reduce: bool = False) -> float:
    """Mean next-token loss of `model` over `batches` micro-batches (None: the whole split).

    `dataset_or_batches`: a PackedDataset (read from its first sample, so repeated calls
    see the same windows) or any iterable of [B, seq+1] token arrays/tensors.
    `reduce`: average over torch.distributed ranks (each passing its own shard).
    """
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    count = 0
    try:
        for batch in _batches(dataset_or_batches, batches, micro_batch_size):
            s, n = lm_loss_sums(model, batch)
            total += s.double()
            count += n
    finally:
        model.train(was_training)
    stats = torch.stack([total, torch.tensor(float(count), dtype=torch.float64, device=total.device)])
    if reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(stats)
    if stats[1] == 0:
        raise UserError("evaluation: no batches to evaluate (empty split?)")
    return float(stats[0] / stats[1])


# ---- the eval stage ----------------------------------------------------------------------


def run_models(exp: Any, layout: Any) -> list[tuple[str, str]]:
    """(name, checkpoint path) of every model of the run, in pipeline order."""
    out = [("teacher", teacher_source(exp, layout))]
    out += [(f"prune-{p.name}", str(layout.model_dir(f"prune-{p.name}"))) for p in exp.prune]
    if exp.distill is not None:
        out += [(f"distill-{p.name}", str(layout.model_dir(f"distill-{p.name}"))) for p in exp.prune]
    return out


def eval_stage(ctx: StageContext) -> None:
    from engine.data import PackedDataset
    from engine.models.hf import compute_device, count_parameters, load_model

    exp, layout = ctx.exp, ctx.layout
    cfg = exp.eval
    if cfg is None:
        raise UserError(f"{exp.source}: no [eval] section")
    device = compute_device()
    cuda = device.type == "cuda"
    dtype = exp.model.dtype if cuda else "float32"
    seq = exp.data.seq_length
    todo = []
    for name, path in run_models(exp, layout):
        inside_run = name != "teacher" or exp.finetune is not None  # else [model].path: a hub id works too
        if has_checkpoint(path) or not inside_run:
            todo.append((name, path))
        else:
            ctx.log(f"[eval] {name}: no checkpoint at {path} yet; left out")
    if not todo:
        raise UserError(f"{ctx.stage}: no model to evaluate yet; run the earlier stages first")
    results: dict[str, Any] = {"models": {}, "seq_length": seq, "updated_at": now_iso()}
    total = len(todo) * len(cfg.splits)
    done = 0
    ctx.progress(0, total_steps=total)
    for name, path in todo:
        model = load_model(path, dtype, exp.model.attn_implementation).to(device)
        use_causal_sdpa(model)  # packed windows, no padding: no mask, no host sync per batch
        entry: dict[str, Any] = {"params": count_parameters(model), "path": path, "splits": {}}
        tokens, seconds = 0, 0.0
        for split in cfg.splits:
            try:
                ds = PackedDataset(layout.data_dir, split, seq, seed=0)
            except UserError as e:
                ctx.log(f"[eval] {name}: split '{split}' skipped ({e})")
                done += 1
                continue
            t0 = time.perf_counter()
            loss = evaluate_loss(model, ds, cfg.batches, cfg.micro_batch_size)
            seconds += time.perf_counter() - t0
            count, micro = batch_plan(len(ds), cfg.batches, cfg.micro_batch_size)
            n = count * micro * ds.seq_length
            tokens += n
            ppl = math.exp(min(loss, 700.0))
            entry["splits"][split] = {"loss": loss, "perplexity": ppl, "tokens": n}
            done += 1
            ctx.progress(done, total_steps=total)
            ctx.log(f"[eval] {name} {split}: loss {loss:.4f} perplexity {ppl:.2f}")
        entry["tokens_per_s"] = tokens / seconds if seconds > 0 else None
        results["models"][name] = entry
        results["updated_at"] = now_iso()
        if ctx.is_main:
            write_json(layout.results_file, results)
        del model
        if cuda:
            torch.cuda.empty_cache()

