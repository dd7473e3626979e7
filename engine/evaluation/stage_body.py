"""The eval stage: every model of the run -> `<run>/eval/results.json`, read by `compare` and the TUI.

For the teacher, each pruned and each distilled student (those whose checkpoint exists), on the
stage's device (the GPU, else the CPU):

    {
      "models": {
        "teacher": {"params": 1235814400, "path": "runs/x/finetune/model", "tokens_per_s": 51234.0,
                    "splits":  {"validation": {"loss": 2.31, "perplexity": 10.07, "tokens": 409600}, ...},
                    "tasks":   {"hellaswag": {"acc": 0.41, "acc_stderr": 0.005, "acc_norm": 0.52, ..., "chance": 0.25}},
                    "subtasks": {...},   # members of task groups (e.g. mmlu's), the same way
                    "speed":   {"device": "NVIDIA H200", "prefill_tokens_per_s": ...,
                                "decode_tokens_per_s": {"1": ..., "16": ...}, "ms_per_token": {"1": ...},
                                "peak_memory_gb": ..., "speedup_vs_teacher": 1.0, "speedup_range": [0.9, 1.1],
                                "decode_tokens_per_s_range": {"1": [lo, hi], ...}, "spread": {...},
                                "repeats": 5, "stopped": "spread", "under_load": false, ...},
                    "samples": [{"prompt": "...", "text": "..."}],
                    "cache_key": "..."},
        "prune-depth": {...}, "distill-depth": {...}
      },
      "tasks": ["hellaswag"],          # [eval] tasks as written
      "seq_length": 2048,
      "updated_at": "2026-11-27T10:00:00+00:00"
    }

`params` counts unique parameters (tied embeddings once); `loss` is the mean next-token
cross-entropy in nats over `tokens` predicted tokens; `perplexity` = exp(loss); `tokens_per_s` is
the forward throughput of the loss evaluation. A split that was not prepared is left out of
"splits"; "tasks" is there when [eval] tasks is set, "speed" when [eval] speed is on, "samples"
unless [eval] prompts = []. Speed is measured last, every model of the run timed together, round
robin (a kept model is loaded again for it): figures taken at different times never meet. Metrics: engine/evaluation/{tasks,speed,samples}.py; the per-model
cache: engine/evaluation/cache.py.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from engine.contract import now_iso, read_json, split_entry, teacher_source, tokenizer_source, write_json
from engine.contract.scores import add_speedups
from engine.contract.stage_context import StageContext, has_checkpoint
from engine.errors import UserError
from engine.evaluation.cache import cached_entries, model_key
from engine.evaluation.loss import batch_plan, evaluate_loss
from engine.evaluation.task_specs import check_tasks
from engine.stages import DISTILL, PRUNE


def run_models(exp: Any, layout: Any) -> list[tuple[str, str]]:
    """(name, checkpoint path) of every model of the run, in pipeline order."""
    out = [("teacher", teacher_source(exp, layout))]
    out += [(PRUNE.stage(p.name), str(PRUNE.model_dir(layout, p.name))) for p in exp.prune]
    if exp.distill is not None:
        out += [(DISTILL.stage(p.name), str(DISTILL.model_dir(layout, p.name))) for p in exp.prune]
    return out


def _loss_splits(ctx: StageContext, name: str, model: Any, entry: dict[str, Any]) -> None:
    from engine.data import PackedDataset
    from engine.models.attention import restore_sdpa, use_causal_sdpa

    cfg, layout, seq = ctx.exp.eval, ctx.layout, ctx.exp.data.seq_length
    use_causal_sdpa(model)  # packed windows, no padding: no mask, no host sync per batch
    tokens, seconds = 0, 0.0
    try:
        for split in cfg.splits:
            try:
                ds = PackedDataset(layout.data_dir, split, seq, seed=0)
            except UserError as e:
                ctx.log(f"[eval] {name}: split '{split}' skipped ({e})")
                continue
            t0 = time.perf_counter()
            loss = evaluate_loss(model, ds, cfg.batches, cfg.micro_batch_size)
            seconds += time.perf_counter() - t0
            count, micro = batch_plan(len(ds), cfg.batches, cfg.micro_batch_size)
            n = count * micro * ds.seq_length
            tokens += n
            entry["splits"][split] = split_entry(loss, n)
            ctx.log(f"[eval] {name} {split}: loss {loss:.4f} perplexity {entry['splits'][split]['perplexity']:.2f}")
    finally:
        restore_sdpa(model.config)  # tasks, speed and samples pad and use the KV cache
    entry["tokens_per_s"] = tokens / seconds if seconds > 0 else None


def eval_stage(ctx: StageContext) -> None:
    from engine.evaluation.samples import default_prompts, generate_samples
    from engine.evaluation.speed import device_name
    from engine.evaluation.tasks import metrics_line, run_tasks
    from engine.models.hf import compute_device, count_parameters, load_model, load_tokenizer

    exp, layout = ctx.exp, ctx.layout
    cfg = exp.eval
    if cfg is None:
        raise UserError(f"{exp.source}: no [eval] section")
    task_entries = check_tasks(exp)  # lm-eval installed, local task files there: before any model loads
    os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's and datasets' progress bars would flood stdout.log
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
    tok_path = tokenizer_source(exp, layout)
    tokenizer = load_tokenizer(tok_path)
    prompts = cfg.prompts
    if prompts is None:
        try:
            prompts = default_prompts(layout.data_dir, tokenizer)
        except UserError as e:
            ctx.log(f"[eval] samples: no validation documents for prompts ({e})")
            prompts = []
    where = device_name(device)
    previous = cached_entries(read_json(layout.results_file))
    results: dict[str, Any] = {"models": {}, "tasks": list(cfg.tasks), "seq_length": seq, "updated_at": now_iso()}
    timing: dict[str, Any] = {}  # models to time together, round robin, once all are evaluated
    ctx.progress(0, total_steps=len(todo))
    for done, (name, path) in enumerate(todo, start=1):
        key = model_key(cfg, path, tok_path, where, seq)
        if previous.get(name, {}).get("cache_key") == key:
            ctx.log(f"[eval] {name}: unchanged since the last evaluation; kept")
            entry = previous[name]
        else:
            model = load_model(path, dtype, exp.model.attn_implementation).to(device)
            entry = {"params": count_parameters(model), "path": path, "splits": {}}
            _loss_splits(ctx, name, model, entry)
            if task_entries:
                entry["tasks"], subtasks = run_tasks(model, tokenizer, task_entries, cfg.num_fewshot, cfg.limit,
                                                     cfg.task_batch_size, seed=exp.seed)
                if subtasks:
                    entry["subtasks"] = subtasks
                ctx.log(f"[eval] {name} tasks: " + "; ".join(metrics_line(t, m) for t, m in entry["tasks"].items()))
            if prompts:
                entry["samples"] = generate_samples(model, tokenizer, prompts, cfg.max_new_tokens)
            entry["cache_key"] = key
            if cfg.speed:
                timing[name] = model.to("cpu") if cuda else model  # the GPU is free for the next model
            del model
            if cuda:
                torch.cuda.empty_cache()
        results["models"][name] = entry
        add_speedups(results["models"])
        results["updated_at"] = now_iso()
        if ctx.is_main:
            write_json(layout.results_file, results)
        ctx.progress(done, total_steps=len(todo))
    if cfg.speed and (timing or any("speed" not in e for e in results["models"].values())):  # or interrupted
        _time_together(ctx, results, timing, dict(todo), device)
        ctx.progress(len(todo), total_steps=len(todo))


def _time_together(ctx: StageContext, results: dict[str, Any], timing: dict[str, Any], paths: dict[str, str],
                   device: torch.device) -> None:
    """Speed of every model, timed in one round-robin measurement (engine.evaluation.speed): the
    models kept from an earlier evaluation are loaded again, so no figure is compared with one
    taken at another time. They share the GPU when their weights fit it together, else each is
    moved there for its turn."""
    from engine.evaluation.speed import device_name, measure_speeds, speed_settings
    from engine.models.hf import load_model

    exp, cfg = ctx.exp, ctx.exp.eval
    cuda = device.type == "cuda"
    for name in results["models"]:
        if name not in timing:
            ctx.log(f"[eval] {name}: loaded again to be timed with the others")
            model = load_model(paths[name], exp.model.dtype if cuda else "float32", exp.model.attn_implementation)
            timing[name] = model
    timing = {n: timing[n] for n in results["models"]}  # pipeline order
    positions = [getattr(m.config, "max_position_embeddings", None) for m in timing.values()]
    settings = speed_settings(cfg, device, min((p for p in positions if p), default=None))
    resident = True
    if cuda:
        need = sum(p.numel() * p.element_size() for m in timing.values() for p in m.parameters())
        resident = need < 0.8 * torch.cuda.mem_get_info(device)[0]  # room left for KV caches and activations
        if resident:
            for m in timing.values():
                m.to(device)
    where = device_name(device)
    ctx.log(f"[eval] speed on {where}: {len(timing)} models timed round robin "
            f"({'together on the device' if resident else 'each moved to the device for its turn'})")
    speeds = measure_speeds(timing, settings, seed=exp.seed, device=device, resident=resident)
    for name, speed in speeds.items():
        results["models"][name]["speed"] = speed
        ctx.log(f"[eval] {name} speed: decode tokens/s " + ", ".join(
            f"{v:.0f} ±{100 * speed['spread']['decode'][b]:.0f}% at batch {b}"
            for b, v in speed["decode_tokens_per_s"].items()))
    first = next(iter(speeds.values()))
    ctx.log(f"[eval] speed: {first['repeats']} rounds, stopped by the {first['stopped']}"
            + (f"; the host was under load (1-min load {first['load']['max_1min']} on {first['load']['cpus']} "
               "CPUs): these figures are noise, not speed" if first["under_load"] else ""))
    add_speedups(results["models"])
    results["updated_at"] = now_iso()
    if ctx.is_main:
        write_json(ctx.layout.results_file, results)
