#!/usr/bin/env bash
# The pipeline on a machine with 2+ GPUs: the demo end to end through `accelerate launch`
# (DDP fine-tune on all GPUs, the two distill stages side by side on disjoint GPUs), then a
# detached run cancelled mid-training, checking that no process and no GPU memory is left.
#   bash benchmarks/pipeline_gpus.sh [OUT_DIR]
set -uo pipefail
out=${1:-${OUT:-/tmp/pipeline_gpus}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
runs=$(mktemp -d)
S=(--set 'model.dtype="bfloat16"' --set 'launch.mixed_precision="bf16"' --set launch.parallel=true)
nvidia-smi -L
echo "== plan"
python3 -m engine run experiments/demo.toml --runs-dir "$runs/a" "${S[@]}" --dry-run
echo "== the demo on $(nvidia-smi -L | wc -l) GPUs"
start=$(date +%s)
python3 -m engine run experiments/demo.toml --runs-dir "$runs/a" "${S[@]}" > "$out/run.log" 2>&1
rc=$?
echo "run: exit $rc in $(( $(date +%s) - start )) s"
grep -E "^==>|val loss|\[eval\]|done in|error" "$out/run.log" | grep -v "step [0-9]*/[0-9]* loss"
python3 -m engine status "$runs/a/demo"
python3 - "$runs/a/demo" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
for s in ("distill-depth", "distill-width"):
    st = json.loads((run / s / "status.json").read_text())
    print(s, "gpus", st["gpus"], st["started_at"], "->", st["ended_at"])
res = json.loads((run / "eval" / "results.json").read_text())["models"]
for name, r in res.items():
    print(f"{name:15s} params {r['params']:>9,d}  val loss {r['splits']['validation']['loss']:.4f}")
PY
for s in finetune distill-depth distill-width; do cp "$runs/a/demo/$s/stdout.log" "$out/$s.log"; done

echo "== cancel a detached 2-GPU fine-tune"
python3 -m engine run experiments/demo.toml --runs-dir "$runs/b" "${S[@]}" --set finetune.steps=100000 --detach
for i in $(seq 1 120); do
  step=$(python3 -c "import json;d=json.load(open('$runs/b/demo/finetune/status.json'));print(d.get('step',0) if d.get('total_steps') else 0)" 2>/dev/null || echo 0)
  [ "${step:-0}" -ge 30 ] && break
  sleep 1
done
echo "finetune at step $step; processes of the run:"
pgrep -af "$runs/b" | cut -c1-160
python3 -m engine cancel "$runs/b/demo" --grace 30
sleep 2
echo "left after cancel (expect none):"
pgrep -af "$runs/b" | cut -c1-160 || true
nvidia-smi --query-compute-apps=pid,used_memory --format=csv
python3 -m engine status "$runs/b/demo"
ls "$runs/b/demo/finetune/checkpoints"
exit $rc
