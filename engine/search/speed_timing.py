"""Timing search shapes on the stage's device: random weights, the eval stage's measurement.

A shape's speed does not depend on its weights, so each shape is built fresh (random weights, the
teacher's config with the shape's sizes, in the stage's dtype, directly on the device) and timed by
engine.evaluation.speed.measure_speeds: round robin within a group, until the spread is small or
the time cap is hit. Groups hold as many models as fit half the memory free on the device, so a
search over a large teacher times its shapes a few at a time instead of running out of memory.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from engine.config.shape import Shape, student_config
from engine.config.speed_target import speed_budget_for
from engine.evaluation.speed import device_name, measure_speeds
from engine.search.speed_budget import Entry, Measure, SpeedCache, SpeedSearch, cache_path
from engine.shapes.budget import memory_gib
from engine.shapes.candidates import candidate_label

GROUP_MEMORY_SHARE = 0.5  # of the device's free memory, for one group of timed models


def random_model(teacher_cfg: dict[str, Any], s: Shape, dtype: str, device: torch.device,
                 attn: str = "sdpa") -> nn.Module:
    """A model of shape `s` with random weights, built on `device` (the first layers' types kept)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.models.hf import torch_dtype

    cfg = student_config(teacher_cfg, s, kept_layers=list(range(s.num_layers)))
    clean = {k: v for k, v in cfg.items() if k not in ("transformers_version", "architectures", "dtype",
                                                       "torch_dtype", "_name_or_path")}
    config = AutoConfig.for_model(clean.pop("model_type"), **clean)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype), attn_implementation=attn)
    return model.eval()


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40  # unknown: one group


def groups(shapes: list[Shape], sizes: list[float], budget: float) -> list[list[int]]:
    """Consecutive groups of shape indices whose sizes add up to at most `budget` (one at least)."""
    out: list[list[int]] = []
    total = 0.0
    for i, size in enumerate(sizes):
        if out and total + size <= budget:
            out[-1].append(i)
            total += size
        else:
            out.append([i])
            total = size
    return out


def entry(speed: dict[str, Any], batch: int) -> Entry:
    """A cache entry from one model's measure_speeds figures at batch size `batch`."""
    return {"decode_ms": speed["ms_per_token"][str(batch)], "prefill_tokens_per_s": speed["prefill_tokens_per_s"],
            "decode_spread": speed["spread"]["decode"][str(batch)], "prefill_spread": speed["spread"]["prefill"],
            "repeats": speed["repeats"], "stopped": speed["stopped"], "under_load": speed["under_load"]}


def shape_timer(teacher_cfg: dict[str, Any], dtype: str, device: torch.device, settings: dict[str, Any],
                attn: str = "sdpa", seed: int = 0, log: Callable[[str], None] = print) -> Measure:
    """measure(shapes) -> their entries, timed on `device` at `settings` (one batch size)."""
    batch = settings["batch_sizes"][0]
    seq = settings["prompt_tokens"] + settings["new_tokens"]

    def measure(shapes: list[Shape]) -> list[Entry]:
        sizes = [memory_gib(s, dtype, seq, batch) * (1 << 30) for s in shapes]
        out: dict[int, Entry] = {}
        for group in groups(shapes, sizes, GROUP_MEMORY_SHARE * free_bytes(device)):
            torch.manual_seed(seed)
            models = {candidate_label(shapes[i]): random_model(teacher_cfg, shapes[i], dtype, device, attn)
                      for i in group}
            speeds = measure_speeds(models, settings, seed=seed, device=device)
            for i in group:
                out[i] = entry(speeds[candidate_label(shapes[i])], batch)
            load = " (under load: the host was busy)" if any(out[i]["under_load"] for i in group) else ""
            log(f"timed {len(group)} shapes round robin, {out[group[0]]['repeats']} rounds{load}")
            del models
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        return [out[i] for i in range(len(shapes))]

    return measure


def timing_where(device: torch.device, dtype: str, attn: str, settings: dict[str, Any]) -> dict[str, Any]:
    """What a timing depends on besides the shape (its cache key): the device, dtype, attention, lengths."""
    return {"device": device_name(device), "dtype": dtype, "attn": attn, "torch": torch.__version__,
            "batch": settings["batch_sizes"][0], "prompt": settings["prompt_tokens"], "new": settings["new_tokens"]}


def speed_search(exp: Any, p: Any, teacher_cfg: dict[str, Any], device: torch.device, where: str,
                 log: Callable[[str], None]) -> SpeedSearch | None:
    """The SpeedSearch of search [[prune]] table `p` on `device` (None without a speed target); UserError
    (one line) when its lengths do not fit the teacher."""
    budget = speed_budget_for(p, exp.eval)
    if budget is None:
        return None
    budget.check_positions(teacher_cfg.get("max_position_embeddings"), where, device.type)
    settings = budget.settings(device.type)
    attn = exp.model.attn_implementation
    measure = shape_timer(teacher_cfg, exp.model.dtype, device, settings, attn, exp.seed, log)
    return SpeedSearch(budget, device.type, timing_where(device, exp.model.dtype, attn, settings), measure,
                       SpeedCache(cache_path()), log, where)
