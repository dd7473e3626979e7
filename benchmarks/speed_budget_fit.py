"""The speed budget's cost model against timings it was not fitted to (issue 23, section 2), on this
machine's device (the GPU when there is one). Nothing is read from or written to the user's speed cache.

    python3 benchmarks/speed_budget_fit.py                       # the search example's teacher (CPU-sized)
    python3 benchmarks/speed_budget_fit.py --config path/to/config.json --target-params 0.6 \
        --hidden-multiple 64 --ffn-multiple 64 --dtype bfloat16 --prompt 512 --new 128

It enumerates a search's candidates, times `--fit-shapes` of them with random weights in one round robin
(a quarter held out), fits the cost model, then times `--extra` more candidates (spread over the rest)
as a search times its finalists, and prints each timed shape's measured and predicted figures and the
model's error on the shapes it was not fitted to.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config.shape import shape_from_config
from engine.config.speed_target import SpeedBudget
from engine.models.hf import compute_device
from engine.search.speed_budget import SpeedCache, SpeedSearch
from engine.search.speed_timing import shape_timer, timing_where
from engine.shapes.candidates import candidate_label, evenly_spaced, search_space

# experiments/search.toml's teacher
SEARCH_TEACHER = dict(model_type="llama", vocab_size=4096, hidden_size=192, intermediate_size=512, num_hidden_layers=6,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="a config.json (default: experiments/search.toml's teacher)")
    ap.add_argument("--target-params", type=float, default=0.5)
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--hidden-multiple", type=int, default=12)
    ap.add_argument("--ffn-multiple", type=int, default=32)
    ap.add_argument("--fit-shapes", type=int, default=12)
    ap.add_argument("--extra", type=int, default=6, help="candidates timed after the fit, as finalists")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="round-robin rounds at least (the engine's speed_repeats)")
    ap.add_argument("--max-seconds", type=float, default=30.0, help="time cap per round robin (the engine's speed_max_seconds)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = json.loads(Path(a.config).read_text()) if a.config else SEARCH_TEACHER
    p = SimpleNamespace(name="fit", method="search", target_params=a.target_params, target_memory_gb=None,
                        tolerance=a.tolerance, axes=["num_layers", "hidden_size", "ffn_hidden_size"],
                        hidden_multiple=a.hidden_multiple, ffn_multiple=a.ffn_multiple, top_k=10, screen_batches=2,
                        screen_max=100_000, selection=None, memory_seq_length=None, memory_batch_size=1)
    space = search_space(shape_from_config(cfg), p, "benchmark", a.dtype, a.prompt + a.new)
    device = compute_device()
    budget = SpeedBudget(1e9, None, a.batch, a.prompt, a.new, a.fit_shapes, repeats=a.repeats, max_spread=0.05,
                         max_seconds=a.max_seconds)
    settings = budget.settings(device.type)
    with tempfile.TemporaryDirectory() as tmp:
        ss = SpeedSearch(budget, device.type, timing_where(device, a.dtype, "sdpa", settings),
                         shape_timer(cfg, a.dtype, device, settings, log=print), SpeedCache(Path(tmp) / "speed.json"),
                         print)
        ss.narrow(space)
        rest = [c.shape for c in space.candidates if c.shape not in ss.timed]
        ss.time_shapes([rest[i] for i in evenly_spaced(range(len(rest)), a.extra)] if rest else [], "finalist")
    print(f"\n{len(space.candidates)} candidates on {ss.where['device']}, {a.dtype}, batch {a.batch}, "
          f"{settings['prompt_tokens']} + {settings['new_tokens']} tokens")
    print(f"{'shape':26s} {'role':9s} {'decode ms':>10s} {'predicted':>10s} {'prefill tok/s':>14s} {'predicted':>10s}")
    for s, e in ss.timed.items():
        pr = ss.predicted[s]
        print(f"{candidate_label(s):26s} {ss.roles[s]:9s} {e['decode_ms']:10.3f} {pr['decode_ms']:10.3f} "
              f"{e['prefill_tokens_per_s']:14,.0f} {pr['prefill_tokens_per_s']:10,.0f}"
              + ("  (under load)" if e.get("under_load") else ""))
    print(ss.error_text(ss.errors()))


if __name__ == "__main__":
    main()
