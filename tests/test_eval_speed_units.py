"""evaluation/speed.py writes peak_memory_gb in GiB, as training (gpu_mem_gb) and search (memory_gb) do."""

from __future__ import annotations

from _prune_util import tiny_model
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)

from engine.contract import GIB
from engine.evaluation.speed import measure_speed


def test_peak_memory_is_in_gib():
    model = tiny_model("llama", layers=2)
    settings = {"batch_sizes": [1, 2], "prompt_tokens": 8, "new_tokens": 4, "repeats": 1, "max_spread": 1.0,
                "max_seconds": 1.0}
    peak = measure_speed(model, settings)["peak_memory_gb"] * GIB  # bytes, if the field is in GiB
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    # CPU: the weights plus the largest KV cache (keys and values, every layer, prompt + decoded tokens)
    kv = 2 * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * (8 + 4 - 1) * 4
    assert round(peak) == weights + kv, (peak, weights, kv)
