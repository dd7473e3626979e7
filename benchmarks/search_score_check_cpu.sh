#!/usr/bin/env bash
# Issue 23 on the CPU: "distill-kd" against "distill" at the same cost, judged by an audit of every scored shape,
# on the search demo (experiments/search.toml: its teacher trained from scratch on the standard-library docs).
# For each [distill] seed (other training windows): a search scored by "distill-kd" that audits all 8 scored
# shapes with the full recipe (120 steps, judged on the test split), then the same search scored by "distill",
# both at score_steps = 40, ranked against that audit (benchmarks/smollm2/score_vs_audit.py).
#
#   benchmarks/search_score_check_cpu.sh OUT [SEED...]      # default seeds: 1234 7 99; ~10 min a seed on 2 cores
#   TARGET=0.7 benchmarks/search_score_check_cpu.sh OUT     # another budget (default 0.5 of the teacher)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?OUT dir}; shift
SEEDS=("$@"); (( ${#SEEDS[@]} )) || SEEDS=(1234 7 99)
R=$OUT/runs; mkdir -p "$OUT"
EXP=(experiments/search.toml --runs-dir "$R")
python3 -m engine run "${EXP[@]}" --only prepare --only finetune > "$OUT/teacher.log" 2>&1
S=(--set prune.search.top_k=8 --set prune.search.score_steps=40 --set prune.search.target_params="${TARGET:-0.5}")
for seed in "${SEEDS[@]}"; do
  python3 -m engine run "${EXP[@]}" --only prune-search "${S[@]}" --set distill.seed="$seed" \
    --set prune.search.score=distill-kd --set prune.search.audit=8 > "$OUT/kd-$seed.log" 2>&1
  cp "$R/search/prune-search/search.json" "$OUT/kd-audit-$seed.json"
  python3 -m engine run "${EXP[@]}" --only prune-search "${S[@]}" --set distill.seed="$seed" \
    --set prune.search.score=distill > "$OUT/distill-$seed.log" 2>&1
  cp "$R/search/prune-search/search.json" "$OUT/distill-$seed.json"
  python3 benchmarks/smollm2/score_vs_audit.py "$OUT/kd-audit-$seed.json" "$OUT/distill-$seed.json" \
    --audit "$OUT/kd-audit-$seed.json" | tee "$OUT/ranking-$seed.txt"
done
