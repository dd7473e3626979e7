"""Inference speed of the models of a run on one device: prefill, decode with the KV cache, memory.

For each batch size B of `batch_sizes`: a prompt of random token ids [B, prompt_tokens] is run
through the model once (prefill, timed), then `new_tokens - 1` more tokens are decoded one at a
time, each step feeding the greedy token with the KV cache (decode, timed). Random ids make every
model do the same work; stopping at EOS is never possible.

Figures that can be compared (`measure_speeds`): the models are timed round robin, one turn of
each per round (the first model of a round rotates), not one model after another, so a burst of
load hits them all alike. One warm-up per model and batch size comes first. Rounds go on until
the spread of every figure is at most `max_spread` (after at least `repeats` rounds), or
`max_seconds` have passed (checked after each round). Each figure is the median of its rounds;
`spread` is (Q3 - Q1) / median of its times and `*_range` the figure at Q3 and Q1 time: the middle
half of the repeats, which `compare` and the TUI check for overlap before calling one model faster
(engine.contract.scores). `under_load`: the host's 1-minute load average exceeded its CPU count
at some point of the measurement (other work was competing for the cores): noise, not speed.

    prefill_tokens_per_s   B * prompt_tokens / prefill time, at the largest B (+ _range)
    decode_tokens_per_s    {"B": B * decode steps / decode time} (+ decode_tokens_per_s_range)
    ms_per_token           {"B": decode time / decode steps, in ms}: the latency of one step
    spread                 {"prefill": s, "decode": {"B": s}}; repeats: the rounds timed
    stopped                "spread" | "time cap" | "round cap"; interleaved: the models timed together
    load                   {"max_1min": ..., "cpus": ...}; under_load: true | false
    peak_memory_gb         in GiB (2**30 bytes, as every *_gb of the engine). CUDA: the allocator's
                           peak during the model's turns, less what other models held;
                           CPU: weights + the largest KV cache (what the model holds, measured
                           from the tensors: the process's own peak RSS is not per model)
On CUDA the phases are timed with CUDA events after a synchronize; on the CPU with perf_counter.
The clock, the timer and the load probe are parameters, so the rules are tested without timing.
prompt_tokens + new_tokens is capped at the model's max_position_embeddings.
"""

from __future__ import annotations

import inspect
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from engine.config.speed_target import CPU_DEFAULTS, GPU_DEFAULTS
from engine.contract import GIB

MAX_ROUNDS = 100  # beyond the time cap, a bound for a clock that never advances

Timer = Callable[[Callable[[], Any]], tuple[float, Any]]  # fn -> (seconds, fn())


def speed_settings(cfg: Any, device: torch.device, max_positions: int | None) -> dict[str, Any]:
    """Batch sizes, prompt and new tokens for `device`: [eval] keys, else the device's defaults."""
    d = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    batch_sizes = sorted(set(cfg.speed_batch_sizes or d["batch_sizes"]))
    prompt = cfg.speed_prompt_tokens or d["prompt_tokens"]
    new = cfg.speed_new_tokens or d["new_tokens"]
    if max_positions and prompt + new > max_positions:
        new = min(new, max(2, max_positions // 4))
        prompt = max(1, max_positions - new)
    return {"batch_sizes": batch_sizes, "prompt_tokens": prompt, "new_tokens": new, "repeats": cfg.speed_repeats,
            "max_spread": cfg.speed_max_spread, "max_seconds": cfg.speed_max_seconds}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class _Timer:
    """Seconds spent in fn(): CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000.0, out
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out


def _cache_bytes(cache: Any) -> int:
    """Bytes held by a KV cache (a transformers Cache or legacy tuples)."""
    seen: dict[int, int] = {}

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            seen[id(x)] = x.numel() * x.element_size()
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)
        elif hasattr(x, "layers"):  # transformers >= 4.56 Cache: .layers[i].keys / .values
            for layer in x.layers:
                walk([getattr(layer, "keys", None), getattr(layer, "values", None)])
    walk(cache)
    return sum(seen.values())


def _cache_kwarg(model: nn.Module) -> str:
    """The forward keyword of the KV cache: `cache` in newer transformers, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _step(model: nn.Module, ids: torch.Tensor, cache: Any, key: str) -> tuple[Any, torch.Tensor]:
    """One forward with the KV cache, logits of the last position only: (cache, greedy token [B, 1])."""
    kwargs = {key: cache} if cache is not None else {}
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **kwargs)
    new_cache = out.get("cache", None) if "cache" in out else out.past_key_values
    return new_cache, out.logits[:, -1:].argmax(-1)


@torch.inference_mode()
def _round(model: nn.Module, ids: torch.Tensor, new_tokens: int, timer: _Timer) -> tuple[float, float, int]:
    """(prefill seconds, decode seconds, KV cache bytes at the end) for one prompt batch."""
    key = _cache_kwarg(model)
    prefill_s, (cache, token) = timer(lambda: _step(model, ids, None, key))

    def decode() -> Any:
        nonlocal cache, token
        for _ in range(new_tokens - 1):
            cache, token = _step(model, token, cache, key)
        return cache

    decode_s, cache = timer(decode)
    return prefill_s, decode_s, _cache_bytes(cache)


# ---- the rules: when to stop, which order, under load (no torch, no clock of their own) ----------


def spread(times: list[float]) -> float:
    """(Q3 - Q1) / median of the repeats' times: the middle half, relative; inf below 2 repeats."""
    if len(times) < 2:
        return math.inf
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(times)


def middle_half(times: list[float]) -> tuple[float, float]:
    """(Q1, Q3) of the repeats' times (one repeat: that time twice)."""
    if len(times) < 2:
        return times[0], times[0]
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return q1, q3


def stop_reason(series: Iterable[list[float]], rounds: int, elapsed_s: float, settings: dict[str, Any]) -> str | None:
    """Why to stop after `rounds` rounds (None: go on): every series' spread small enough once the
    minimum repeats are in, else the time cap, else the round cap."""
    if rounds < settings["repeats"]:
        return None
    if all(spread(x) <= settings["max_spread"] for x in series):
        return "spread"
    if elapsed_s >= settings["max_seconds"]:
        return "time cap"
    return "round cap" if rounds >= MAX_ROUNDS else None


def round_robin(names: list[str], turn: Callable[[str], None], stop: Callable[[int, float], str | None],
                clock: Callable[[], float]) -> tuple[int, str]:
    """turn(name) for each model, a round at a time, each round starting one model later (no model
    always follows the same one), until stop(rounds, elapsed seconds) names a reason: (rounds, reason)."""
    t0, rounds = clock(), 0
    while True:
        k = rounds % len(names)
        for name in names[k:] + names[:k]:
            turn(name)
        rounds += 1
        reason = stop(rounds, clock() - t0)
        if reason is not None:
            return rounds, reason


def host_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def host_load() -> float:
    """The host's 1-minute load average (0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def under_load(max_load: float, cpus: int) -> bool:
    """More runnable threads than cores: something else competed with the timing for the CPU."""
    return max_load > cpus


# ---- the measurement ---------------------------------------------------------------------------


def measure_speed(model: nn.Module, settings: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """The `speed` entry of one model timed alone (see measure_speeds)."""
    return measure_speeds({"model": model}, settings, seed)["model"]


def measure_speeds(models: dict[str, nn.Module], settings: dict[str, Any], seed: int = 0, *,
                   timer: Timer | None = None, clock: Callable[[], float] = time.perf_counter,
                   load: Callable[[], float] = host_load, cpus: int | None = None,
                   device: torch.device | None = None, resident: bool = True) -> dict[str, dict[str, Any]]:
    """{name: its `speed` entry} (see the module doc; speedup_vs_teacher is added later), the models
    timed round robin on `device` (default: the first model's). resident=False: each model is moved
    to the device for its turn (and warmed up again) and back to where it was after, when they do
    not fit the device together."""
    names = list(models)
    device = device or next(models[names[0]].parameters()).device
    timer = timer or _Timer(device)
    cpus = cpus or host_cpus()
    prompt, new = settings["prompt_tokens"], settings["new_tokens"]
    gen = torch.Generator().manual_seed(seed)
    ids = {b: torch.randint(0, 1 << 30, (b, prompt), generator=gen) for b in settings["batch_sizes"]}
    times: dict[tuple[str, int, str], list[float]] = {(n, b, ph): [] for n in names for b in ids
                                                      for ph in ("prefill", "decode")}
    kv = dict.fromkeys(names, 0)
    peak = dict.fromkeys(names, 0)
    homes = {n: next(m.parameters()).device for n, m in models.items()}
    modes = {n: m.training for n, m in models.items()}
    loads = [load()]

    def inputs(name: str, b: int) -> torch.Tensor:
        return (ids[b] % models[name].config.vocab_size).to(device)  # the same ids for models of one vocab

    def turn(name: str, timed: bool = True) -> None:
        model = models[name]
        if not resident:
            model.to(device)
        base = _begin_peak(device)
        for b in ids:
            if not resident or not timed:
                _round(model, inputs(name, b), min(new, 4), timer)  # warm-up: kernels, allocator, caches
            if timed:
                pre, dec, cache = _round(model, inputs(name, b), new, timer)
                times[(name, b, "prefill")].append(pre)
                times[(name, b, "decode")].append(dec)
                kv[name] = max(kv[name], cache)
        peak[name] = max(peak[name], _end_peak(device, base))
        if not resident:
            model.to(homes[name])

    big = max(ids)  # prefill is reported at the largest batch size only
    reported = [t for (_n, b, phase), t in times.items() if phase == "decode" or b == big]

    def stop(rounds: int, elapsed: float) -> str | None:
        loads.append(load())
        return stop_reason(reported, rounds, elapsed, settings)

    try:
        for m in models.values():
            m.eval()
        if resident:
            for n in names:
                turn(n, timed=False)
        rounds, reason = round_robin(names, turn, stop, clock)
    finally:
        for n, m in models.items():
            m.train(modes[n])
    load_info = {"max_1min": round(max(loads), 2), "cpus": cpus}
    return {n: {**_figures(n, times, settings, rounds), "device": device_name(device),
                "peak_memory_gb": (_weights(models[n]) + (peak[n] if device.type == "cuda" else kv[n])) / GIB,
                "stopped": reason, "interleaved": names, "load": load_info,
                "under_load": under_load(max(loads), cpus)} for n in names}


def _figures(name: str, times: dict[tuple[str, int, str], list[float]], settings: dict[str, Any],
             rounds: int) -> dict[str, Any]:
    prompt, new = settings["prompt_tokens"], settings["new_tokens"]
    steps = new - 1
    decode_tps, decode_range, ms, dec_spread = {}, {}, {}, {}
    for b in settings["batch_sizes"]:
        dec = times[(name, b, "decode")]
        lo, hi = middle_half(dec)
        decode_tps[str(b)] = b * steps / statistics.median(dec)
        decode_range[str(b)] = [b * steps / hi, b * steps / lo]
        ms[str(b)] = 1000.0 * statistics.median(dec) / steps
        dec_spread[str(b)] = round(spread(dec), 4)
    big = max(settings["batch_sizes"])  # prefill at the largest batch size
    pre = times[(name, big, "prefill")]
    lo, hi = middle_half(pre)
    return {"prefill_tokens_per_s": big * prompt / statistics.median(pre),
            "prefill_tokens_per_s_range": [big * prompt / hi, big * prompt / lo],
            "decode_tokens_per_s": decode_tps, "decode_tokens_per_s_range": decode_range, "ms_per_token": ms,
            "spread": {"prefill": round(spread(pre), 4), "decode": dec_spread},
            "prefill_batch_size": big, "prompt_tokens": prompt, "new_tokens": new, "repeats": rounds}


def _weights(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in {id(p): p for p in model.parameters()}.values())


def _begin_peak(device: torch.device) -> int:
    """Bytes allocated now (the CUDA peak counter reset); 0 on the CPU."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _end_peak(device: torch.device, base: int) -> int:
    """CUDA: the peak since _begin_peak above what was allocated then (the model's own working set)."""
    return torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else 0
