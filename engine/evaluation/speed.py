"""Inference speed of one model on the eval stage's device: prefill, decode with the KV cache, memory.

For each batch size B of `batch_sizes`: a prompt of random token ids [B, prompt_tokens] is run
through the model once (prefill, timed), then `new_tokens - 1` more tokens are decoded one at a
time, each step feeding the greedy token with the KV cache (decode, timed). Random ids make every
model do the same work; stopping at EOS is never possible. One warm-up round at each batch size
comes first; then `repeats` rounds, and the median time of each phase is kept.

    prefill_tokens_per_s   B * prompt_tokens / prefill time, at the largest B
    decode_tokens_per_s    {"B": B * decode steps / decode time}
    ms_per_token           {"B": decode time / decode steps, in ms}: the latency of one step
    peak_memory_gb         in GiB (2**30 bytes, as every *_gb of the engine). CUDA: the allocator's
                           peak over the whole measurement;
                           CPU: weights + the largest KV cache (what the model holds, measured
                           from the tensors: the process's own peak RSS is not per model)
On CUDA the phases are timed with CUDA events after a synchronize; on the CPU with perf_counter.
prompt_tokens + new_tokens is capped at the model's max_position_embeddings.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from engine.contract import GIB

GPU_DEFAULTS = {"batch_sizes": [1, 16], "prompt_tokens": 512, "new_tokens": 128}
CPU_DEFAULTS = {"batch_sizes": [1, 4], "prompt_tokens": 64, "new_tokens": 16}


def speed_settings(cfg: Any, device: torch.device, max_positions: int | None) -> dict[str, Any]:
    """Batch sizes, prompt and new tokens for `device`: [eval] keys, else the device's defaults."""
    d = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    batch_sizes = sorted(set(cfg.speed_batch_sizes or d["batch_sizes"]))
    prompt = cfg.speed_prompt_tokens or d["prompt_tokens"]
    new = cfg.speed_new_tokens or d["new_tokens"]
    if max_positions and prompt + new > max_positions:
        new = min(new, max(2, max_positions // 4))
        prompt = max(1, max_positions - new)
    return {"batch_sizes": batch_sizes, "prompt_tokens": prompt, "new_tokens": new, "repeats": cfg.speed_repeats}


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


def measure_speed(model: nn.Module, settings: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """The `speed` entry of one model (see the module doc); speedup_vs_teacher is added later."""
    device = next(model.parameters()).device
    timer = _Timer(device)
    vocab = model.config.vocab_size
    prompt, new, repeats = settings["prompt_tokens"], settings["new_tokens"], settings["repeats"]
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    decode_tps: dict[str, float] = {}
    ms_per_token: dict[str, float] = {}
    prefill_tps = 0.0
    kv_peak = 0
    try:
        for b in settings["batch_sizes"]:
            ids = torch.randint(0, vocab, (b, prompt), generator=gen).to(device)
            _round(model, ids, min(new, 4), timer)  # warm-up: kernels, allocator, caches
            rounds = [_round(model, ids, new, timer) for _ in range(repeats)]
            prefill_s = statistics.median(r[0] for r in rounds)
            decode_s = statistics.median(r[1] for r in rounds)
            kv_peak = max(kv_peak, max(r[2] for r in rounds))
            steps = new - 1
            decode_tps[str(b)] = b * steps / decode_s
            ms_per_token[str(b)] = 1000.0 * decode_s / steps
            prefill_tps = b * prompt / prefill_s  # the largest batch size wins (sorted ascending)
    finally:
        model.train(was_training)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        weights = sum(t.numel() * t.element_size() for t in {id(p): p for p in model.parameters()}.values())
        peak = weights + kv_peak
    return {"device": device_name(device), "prefill_tokens_per_s": prefill_tps,
            "decode_tokens_per_s": decode_tps, "ms_per_token": ms_per_token, "peak_memory_gb": peak / GIB,
            "prefill_batch_size": max(settings["batch_sizes"]), "prompt_tokens": prompt, "new_tokens": new,
            "repeats": repeats}
