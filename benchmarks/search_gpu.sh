#!/usr/bin/env bash
# Search on a real model (issue 14): SmolLM2-135M-Instruct at 0.6 of its parameters (~81M), a search
# student scored by a short distillation (and one scored by the loss right after pruning, to see
# whether the ranking flips), beside hand-made depth and width students of the same size; all
# distilled the same way, then evaluated. Record the search tables and the compare table it prints
# in benchmarks/RESULTS.md.
#
#   1. the teacher in Hugging Face form: bash benchmarks/decide_gpu.sh fetch, then on the GPU machine
#      bash benchmarks/decide_gpu.sh run (writes runs-decide/smollm2-hf), or set SMOLLM2_HF=<folder>
#   2. on the GPU machine:  bash benchmarks/search_gpu.sh            # writes $OUT (or runs-search/)
#
# Hand-made students at the same size: depth keeps 15 of 30 layers (by LM loss, as the search
# does); width cuts the MLP 1536 -> 512. SmolLM2 has 9 heads, so a Llama config needs hidden a
# multiple of 9: the search steps hidden by 72 (hidden_multiple = 8) and the MLP by 64.
set -euo pipefail
cd "$(dirname "$0")/.."
HF="${SMOLLM2_HF:-runs-decide/smollm2-hf}"
OUTDIR="${OUT:-runs-search}"
PY="${PYTHON:-python3}"
[ -f "$HF/config.json" ] || { echo "no $HF/config.json: run benchmarks/decide_gpu.sh first or set SMOLLM2_HF" >&2; exit 2; }
mkdir -p "$OUTDIR"
EXP="$OUTDIR/search-smollm2.toml"
cat > "$EXP" <<TOML
name = "search-smollm2"
runs_dir = "$OUTDIR"

[model]
path = "$HF"
dtype = "bfloat16"

[data]
dataset = "builtin:stdlib-docs"
seq_length = 512
workers = 8

[[prune]]
name = "depth"
method = "depth"
num_layers = 15
selection = "lm-loss"
calibration_samples = 256

[[prune]]
name = "width"
method = "width"
ffn_hidden_size = 512
calibration_samples = 256

[[prune]]
name = "search"
method = "search"
target_params = 0.6
hidden_multiple = 8
ffn_multiple = 64
top_k = 10
score = "distill"
score_steps = ${SCORE_STEPS:-50}
calibration_samples = 256

[[prune]]
name = "search-loss"
method = "search"
target_params = 0.6
hidden_multiple = 8
ffn_multiple = 64
top_k = 10
score = "loss"
importance_from = "search"
calibration_samples = 256

[distill]
steps = ${DISTILL_STEPS:-200}
global_batch_size = 64
micro_batch_size = 16
lr = 1e-4
min_lr = 1e-5
warmup_steps = 10
val_interval = 50
val_batches = 8
checkpoint_interval = 200

[eval]
splits = ["validation"]
batches = 20
micro_batch_size = 8
speed = false
prompts = []

[launch]
gpus = [0]
TOML
"$PY" -m engine check "$EXP"
"$PY" -m engine run "$EXP"
"$PY" -m engine compare "$OUTDIR/search-smollm2" --no-chart --out "$OUTDIR"
