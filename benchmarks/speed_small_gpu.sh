#!/usr/bin/env bash
# Issue 21 section 4 (small models off the host) on one GPU: what the compiler and the attention backend can
# still take out of SmolLM2-135M's distillation step, each variant in its own process, side by side with the
# engine's default in the same call. Random weights and tokens (speed does not depend on the values).
#
#   benchmarks/speed_small_gpu.sh OUT        # carry .whl (pydantic and friends) where the machine lacks them
#
#   default     the engine's compiled step (engine-compile), PyTorch's SDPA choice
#   cudnn/flash SDPA pinned to one backend (benchmarks/distill_throughput.py --sdpa)
#   cdt         TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1: inductor tunes its element-wise and norm kernels
#   autotune    TORCHINDUCTOR_MAX_AUTOTUNE=1: inductor also tries Triton matmul templates, whose epilogues can
#               take in the element-wise work after a matmul (SwiGLU, residual adds); compiling takes minutes,
#               so it runs last
#   combo       cdt and SDPA pinned to cuDNN together
#   b128        128 sequences a step instead of 64
#   profile1b   the 1.24B step (bf16 moments, stochastic rounding: the fastest recipe) profiled per kernel group
#   1b, f8      the same 1.24B step timed, and with float8 = true (torchao's float8 matmuls in the decoder layers
#               of student and teacher); f8small: float8 at SmolLM2's shape
#   1b16, f816  the 1.24B step at 16 sequences a step (the size "auto" picks where the global batch allows),
#               bf16 and float8: SMALL_VARIANTS="1b f8 1b16 f816" is the 58% goal's measurement, side by side
# SMALL_VARIANTS picks some (default: all, in the order above). Each has SMALL_TIMEOUT seconds (default 150;
# autotune twice that). The profile's table goes to OUT/profile-*.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?OUT dir}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
source benchmarks/carried_wheels.sh && wheels
export PYTHONPATH=$HOME/site:$PWD
LOG=$OUT/speed_small.log
nvidia-smi -L 2>/dev/null | tee -a "$LOG"
bench() {  # tag, then env assignments and distill_throughput.py arguments
  local tag=$1; shift
  echo "== $(date -u +%H:%M:%S) $tag" | tee -a "$LOG"
  env "$@" --json "$OUT/$tag.json" 2>&1 | grep --line-buffered -v -i warn \
    | grep --line-buffered -E "tok/s|profile|FAILED|Error" | sed "s/^/$tag /" | tee -a "$LOG"
}
T=${SMALL_TIMEOUT:-150}
read -ra MORE <<< "${SMALL_ARGS:-}"  # e.g. "--tiny --warmup 1 --steps 1": a CPU smoke test of this script
D=(timeout "$T" python3 benchmarks/distill_throughput.py --shape smollm2 --variants engine-compile --steps 10 "${MORE[@]}")
B=(timeout "$T" python3 benchmarks/distill_throughput.py --steps 10 "${MORE[@]}" --variants engine-compile-bf16states-sr)
for v in ${SMALL_VARIANTS:-default cudnn flash cdt combo b128 profile1b 1b f8 f8small autotune}; do
  case $v in
    default) bench default "${D[@]}" ;;
    cudnn|flash) bench "$v" "${D[@]}" --sdpa "$v" ;;
    cdt) bench cdt TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 "${D[@]}" ;;
    combo) bench combo TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 "${D[@]}" --sdpa cudnn ;;
    autotune) bench autotune TORCHINDUCTOR_MAX_AUTOTUNE=1 timeout $((T * 2)) "${D[@]:2}" ;;
    b128) bench b128 "${D[@]}" --batch 128 ;;
    profile1b)
      bench profile1b timeout "$T" python3 benchmarks/distill_throughput.py --variants engine-compile-bf16states-sr \
        --profile engine-compile-bf16states-sr --steps 6 "${MORE[@]}" ;;
    1b) bench 1b "${B[@]}" ;;
    f8) bench f8 "${B[@]}" --variants engine-compile-bf16states-sr-f8 ;;  # (the last --variants counts)
    f8small) bench f8small "${D[@]}" --variants engine-compile-f8 ;;
    1b16) bench 1b16 "${B[@]}" --batch 16 ;;
    f816) bench f816 "${B[@]}" --variants engine-compile-bf16states-sr-f8 --batch 16 ;;
    *) echo "unknown variant $v" >&2; exit 2 ;;
  esac
done
