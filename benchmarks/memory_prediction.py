"""Predicted against measured peak GPU memory of a distillation step (issue 21), at three sizes.

For each case: the teacher and the student with random weights on the GPU (memory does not depend on
the values), the engine's Trainer (the code a distill stage runs) with the case's knobs, a few optimizer
steps on random tokens, and torch's allocator peak (max_memory_allocated, since before the first step)
against engine.resources.memory.training_need, the prediction `slimlab-engine check` prints.

    python benchmarks/memory_prediction.py [--cases smollm2,1b,8b-width,8b-width-h100] [--json OUT]
    python benchmarks/memory_prediction.py --tiny          # CPU smoke test of the script itself

Cases (teacher -> student, tokens per micro-batch, knobs):
    smollm2          SmolLM2-135M shape -> 15 of 30 layers; 16 x 2048; master weights, fp32 states
    1b               Llama 16 x 2048 (1.24B, tied) -> 8 layers (0.75B); 4 x 2048
    8b-width         Llama-3.1-8B -> width (hidden 3072, ffn 9216; 4.5B); 8 x 4096, gradient checkpointing
    8b-width-h100    the same with optimizer_states = "bfloat16" and 4 x 4096: the 80 GB recipe
Results: benchmarks/RESULTS.md ("8B on one GPU"); the device call: benchmarks/scale_gpu.sh.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from model_shapes import LLAMA31_8B, LLAMA_1B, SMOLLM2  # noqa: E402  (this folder)

TINY = dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)

# name: teacher arch, student changes, micro-batch, seq, trainer knobs
CASES = {
    "smollm2": (SMOLLM2, {"num_hidden_layers": 15}, 16, 2048, {}),
    "1b": (LLAMA_1B, {"num_hidden_layers": 8}, 4, 2048, {}),
    "8b-width": (LLAMA31_8B, {"hidden_size": 3072, "intermediate_size": 9216}, 8, 4096,
                 {"gradient_checkpointing": True}),
    "8b-width-h100": (LLAMA31_8B, {"hidden_size": 3072, "intermediate_size": 9216}, 4, 4096,
                      {"gradient_checkpointing": True, "optimizer_states": "bfloat16"}),
    "tiny": (TINY, {"num_hidden_layers": 2}, 2, 64, {}),
    "tiny-gc": (TINY, {"num_hidden_layers": 2}, 2, 64, {"gradient_checkpointing": True}),
}


def build(arch: dict, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**arch)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=dtype)


def run_case(name: str, device: torch.device, steps: int) -> dict:
    from accelerate import Accelerator

    from engine.config import DistillConfig
    from engine.config.shape import shape_from_config
    from engine.resources.memory import Knobs, training_need
    from engine.training.stage_bodies import loss_spec
    from engine.training.step import Trainer

    arch, change, micro, seq, knobs = CASES[name]
    student_arch = {**arch, **change}
    cuda = device.type == "cuda"
    k = Knobs(cuda=cuda, processes=1, fsdp=False, micro_batch=micro, accumulation=1,
              gradient_checkpointing=knobs.get("gradient_checkpointing", False), compile=False, master_weights=True,
              state_bytes=4 if knobs.get("optimizer_states") == "bfloat16" else 8, chunk_tokens=4096, model_bytes=2,
              mixed_bf16=cuda)
    need = training_need(f"distill-{name}", shape_from_config(student_arch), shape_from_config(arch), k, seq)
    if cuda and need.total > torch.cuda.get_device_properties(device).total_memory - 1.5 * 2**30:
        return {"case": name, "skipped": f"predicted {need.gib():.1f} GiB: more than this card holds"}
    acc = Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda)
    cfg = DistillConfig(steps=1000, global_batch_size=micro, micro_batch_size=micro, warmup_steps=0, **knobs)
    teacher = build(arch, torch.bfloat16 if cuda else torch.float32, device)
    student = build(student_arch, torch.float32, device)  # fp32: the stage loads it so (masters from it)
    trainer = Trainer(acc, student, cfg, loss_spec(cfg, arch["vocab_size"]), teacher, seq_length=seq)
    del teacher, student
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    losses = []
    for _ in range(steps):
        batch = torch.randint(0, arch["vocab_size"], (micro, seq + 1), generator=g).to(device)
        losses.append(trainer.launch([batch], 1e-5).result().loss)
    if cuda:
        torch.cuda.synchronize(device)
    sec = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    assert k.chunk_tokens == cfg.chunk_tokens and k.master_weights == cfg.master_weights  # the knobs predicted
    out = {"case": name, "micro": micro, "seq": seq, "knobs": knobs, "precision": trainer.precision,
           "peak_gib": peak, "predicted_gib": need.gib(), "peak_phase": need.peak_phase,
           "parts_gib": {p: v / 2**30 for d in (need.parts, *need.phases.values()) for p, v in d.items()},
           "error": (need.gib() - peak) / peak if peak else None, "sec_per_step": sec,
           "tokens_per_s": micro * seq / sec, "mfu": trainer.flops_per_token * micro * seq / sec / 989e12,
           "loss_first_last": [losses[0], losses[-1]]}
    del trainer
    acc.free_memory()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="smollm2,1b,8b-width,8b-width-h100")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: the tiny cases")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = ["tiny", "tiny-gc"] if args.tiny else args.cases.split(",")
    results = []
    for name in names:
        try:
            r = run_case(name, device, args.steps)
        except Exception as e:  # noqa: BLE001  (one case failing must not hide the others)
            r = {"case": name, "failed": f"{type(e).__name__}: {e}"[:500]}
        results.append(r)
        print(json.dumps(r), flush=True)
    print(f"{'case':<16} {'measured':>9} {'predicted':>9} {'error':>7} {'tok/s':>9} {'MFU':>6}")
    for r in results:
        if "failed" in r or "skipped" in r:
            print(f"{r['case']:<16} {r.get('failed') or r.get('skipped')}"[:120])
        elif r["peak_gib"] is not None:
            print(f"{r['case']:<16} {r['peak_gib']:9.2f} {r['predicted_gib']:9.2f} {r['error']:+7.1%} "
                  f"{r['tokens_per_s']:9.0f} {r['mfu']:6.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
