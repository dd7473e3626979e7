#!/usr/bin/env bash
# The device calls behind benchmarks/RESULTS.md (distillation): one GPU (naive vs engine), then
# 2 GPUs through accelerate launch (DDP, FSDP) and the FSDP end-to-end smoke test.
#   benchmarks/distill_gpu.sh OUT_DIR [single|multi|all]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?OUT dir}; WHAT=${2:-all}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
LOG="$OUT/distill.log"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | tee -a "$LOG"
B=benchmarks/distill_throughput.py
if [[ $WHAT == single || $WHAT == all ]]; then
  echo "== 1 GPU" | tee -a "$LOG"
  CUDA_VISIBLE_DEVICES=0 timeout 420 python3 $B --check --profile engine-compile \
    --variants naive,engine-compile-autocast,engine-compile,engine-compile-accum4,engine-compile-micro8-accum2 --json "$OUT/single.json" 2>&1 | grep -vi warn | tee -a "$LOG"
fi
if [[ $WHAT == multi || $WHAT == all ]]; then
  for S in ddp fsdp; do
    echo "== 2 GPUs $S" | tee -a "$LOG"
    timeout 200 accelerate launch --num_processes 2 --multi_gpu --mixed_precision bf16 --dynamo_backend no \
      --main_process_port 29611 $B --strategy $S --variants engine-compile,engine-compile-accum4 \
      --json "$OUT/$S.json" 2>&1 | grep -vi warn | grep -v "^\[rank" | tee -a "$LOG"
  done
  echo "== FSDP smoke test (tiny models, real stages)" | tee -a "$LOG"
  timeout 300 python3 benchmarks/fsdp_smoke.py /tmp/fsdp_smoke > "$OUT/smoke.log" 2>&1
  grep -E "^ok|^FAIL|loss:" "$OUT/smoke.log" | tee -a "$LOG"
fi
