"""The memory model (engine/resources/memory.py) against every training peak measured on a GPU so far.

The peaks are the allocator's (torch.cuda.max_memory_allocated), recorded in benchmarks/RESULTS.md ("8B on one
GPU": the tables of 2026-12-06, one NVIDIA H100 80GB HBM3) and in the artefacts named beside each case. This
script recomputes today's prediction for each, so that a change to the model shows what it does to all of
them at once (no GPU needed):

    python3 benchmarks/memory_model_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_shapes import LLAMA31_8B, LLAMA_1B, SMOLLM2  # noqa: E402

from engine.config.shape import shape_from_config  # noqa: E402
from engine.resources.memory import Knobs, training_need  # noqa: E402

WIDTH = {**LLAMA31_8B, "hidden_size": 3072, "intermediate_size": 9216}
DEPTH = {**LLAMA31_8B, "num_hidden_layers": 16}
SMALL = {**LLAMA_1B, "num_hidden_layers": 8}
SMOL_STUDENT = {**SMOLLM2, "num_hidden_layers": 15}
# name, student, teacher, micro-batch, seq, gradient_checkpointing, master_weights, moment bytes, chunk,
# compiled, measured GiB, where it was measured (H100, 2026-12-06; 2026-12-07 for the float8 pairs and the
# larger micro-batches), and float8 (when given)
F8 = "benchmarks/scale/h100_float8/"
B = "benchmarks/scale/h100_1b_batch/"  # 8 and 16 sequences a step (2026-12-07, 13:15 UTC)
CASES = [
    ("1.24B compiled, masters, fp32 moments", SMALL, LLAMA_1B, 4, 2048, False, True, 8, 4096, True, 21.85,
     "benchmarks/scale/h100_stochastic/options-1b-engine-compile.json"),
    ("1.24B compiled, stochastic, fp32 moments", SMALL, LLAMA_1B, 4, 2048, False, "stochastic", 8, 4096, True, 19.06,
     "benchmarks/scale/h100_stochastic/options-1b-engine-compile-sr.json"),
    ("1.24B compiled, stochastic, bf16 moments", SMALL, LLAMA_1B, 4, 2048, False, "stochastic", 4, 4096, True, 16.27,
     "benchmarks/scale/h100_stochastic/options-1b-engine-compile-bf16states-sr.json"),
    ("8B width, masters, 0.9", WIDTH, LLAMA31_8B, 4, 4096, 0.9, True, 4, 512, True, 67.06, "RESULTS.md, 10:55 UTC"),
    ("8B width, masters, true", WIDTH, LLAMA31_8B, 4, 4096, True, True, 4, 512, True, 66.47, "RESULTS.md, 10:55 UTC"),
    ("8B depth, masters, 0.9", DEPTH, LLAMA31_8B, 4, 4096, 0.9, True, 4, 512, True, 67.18, "RESULTS.md, 10:55 UTC"),
    ("8B depth, masters, true", DEPTH, LLAMA31_8B, 4, 4096, True, True, 4, 512, True, 67.18, "RESULTS.md, 10:55 UTC"),
    ("8B width, stochastic, 0.6 (stage)", WIDTH, LLAMA31_8B, 4, 4096, 0.6, "stochastic", 4, 512, True, 64.63,
     "benchmarks/scale/h100_stochastic/distill-width-status.json"),
    ("8B depth, stochastic, 0.5 (stage)", DEPTH, LLAMA31_8B, 4, 4096, 0.5, "stochastic", 4, 512, True, 61.97,
     "benchmarks/scale/h100_stochastic/distill-depth-status.json"),
    ("8B width, masters, true, eager", WIDTH, LLAMA31_8B, 4, 4096, True, True, 4, 512, False, 67.50,
     "RESULTS.md, 02:58 UTC"),
    ("8B depth, masters, true, eager", DEPTH, LLAMA31_8B, 4, 4096, True, True, 4, 512, False, 68.68,
     "RESULTS.md, 02:58 UTC"),
    ("8B width, stochastic, 0.4", WIDTH, LLAMA31_8B, 4, 4096, 0.4, "stochastic", 4, 512, True, 73.28,
     F8 + "8b-engine-compile-chunk512-gc0.4-bf16states-sr.json"),
    ("8B width, stochastic, 0.4, float8", WIDTH, LLAMA31_8B, 4, 4096, 0.4, "stochastic", 4, 512, True, 64.36,
     F8 + "8b-engine-compile-chunk512-gc0.4-bf16states-sr-f8.json", True),
    ("1.24B compiled, stochastic, bf16 moments, float8", SMALL, LLAMA_1B, 4, 2048, False, "stochastic", 4, 4096, True,
     14.77, F8 + "f8.json", True),
    ("1.24B compiled, stochastic, bf16 moments, b8", SMALL, LLAMA_1B, 8, 2048, False, "stochastic", 4, 4096, True,
     21.09, B + "b8/1b.json"),
    ("1.24B compiled, stochastic, bf16 moments, b16", SMALL, LLAMA_1B, 16, 2048, False, "stochastic", 4, 4096, True,
     30.73, B + "b16/1b.json"),
    ("1.24B, the same, float8, b8", SMALL, LLAMA_1B, 8, 2048, False, "stochastic", 4, 4096, True, 18.09, B + "b8/f8.json",
     True),
    ("1.24B, the same, float8, b16", SMALL, LLAMA_1B, 16, 2048, False, "stochastic", 4, 4096, True, 24.73, B + "b16/f8.json",
     True),
    ("SmolLM2 shape, compiled, masters", SMOL_STUDENT, SMOLLM2, 64, 512, False, True, 8, 4096, True, 10.97,
     F8 + "default.json"),
    ("SmolLM2 shape, compiled, masters, float8", SMOL_STUDENT, SMOLLM2, 64, 512, False, True, 8, 4096, True, 8.51,
     F8 + "f8small.json", True),
]


def main() -> None:
    worst = 0.0
    for name, student, teacher, micro, seq, gc, master, states, chunk, compiled, measured, where, *float8 in CASES:
        k = Knobs(cuda=True, processes=1, fsdp=False, micro_batch=micro, accumulation=1, gradient_checkpointing=gc,
                  compile=compiled, master_weights=master, state_bytes=states, chunk_tokens=chunk, model_bytes=2,
                  mixed_bf16=True, float8=bool(float8))
        need = training_need("distill", shape_from_config(student), shape_from_config(teacher), k, seq)
        error = need.gib() / measured - 1
        worst = max(worst, abs(error))
        print(f"{name:42s} measured {measured:6.2f} GiB  predicted {need.gib():6.2f} ({error:+.1%}, {need.peak_phase})"
              f"  [{where}]")
    print(f"largest error: {worst:.1%}")


if __name__ == "__main__":
    main()
