#!/usr/bin/env bash
# Issue 21 on one GPU: Llama-3.1-8B (random weights) -> 4.5B students at seq 4096, and the memory prediction
# against the measured peak at three sizes. The device calls behind benchmarks/RESULTS.md ("8B on one GPU").
#
#   benchmarks/scale_gpu.sh OUT PART...     PART: memory | teacher | width | resume | depth | h200 | search | graph |
#                                             recompute | options | int8 | topk | summary
#
#   memory   benchmarks/memory_prediction.py: predicted vs measured peak (SmolLM2-135M, 1.24B shapes; the 8B
#            stages below log theirs; MEMORY_CASES=smollm2,1b,8b-width,8b-width-h100 adds the 8B Trainer cases)
#   teacher  a random Llama-3.1-8B folder (benchmarks/scratch_model.py) in $TEACHER (default /dev/shm)
#   width    benchmarks/scale/width-80gb.toml (stochastic rounding, 0.6 checkpointed) under a 79 GiB cap (an 80 GB
#            H100's memory): prune-width
#            (1024 calibration samples), then distill-width, cancelled at step $KILL_AT (a checkpoint)
#            WIDTH_EXP=benchmarks/scale/h200.toml CAP=139: the same kill with the H200 recipe (the run stops
#            there, before the depth stages)
#   resume   the same run again: distill-width resumes from the checkpoint and finishes; then the stages left
#            (eval with speed; with h200.toml prune-depth and distill-depth too)
#   depth    benchmarks/scale/depth-h200.toml: prune-depth, distill-depth, eval, default precision
#   h200     benchmarks/scale/h200.toml: both students with the H200 recipe (no recompute), H200_ONLY="--only ..."
#   search   benchmarks/scale/search-0.56.toml: a search at 0.56 of the teacher, scored by loss
#   graph    SmolLM2-135M shape: the engine's compiled step with and without teacher_cuda_graph
#   recompute  the 8B students' distillation step (random weights, the 80 GB recipe) with gradient_checkpointing
#            = 0.9 and = true side by side, each variant in its own process (benchmarks/distill_throughput.py)
#   int8     optimizer_states = "int8" (-int8states; -int8fused: in one kernel, SLIMLAB_INT8_FUSED=1) against the
#            recipe's bf16 moments: at 1.24B the KD loss after 30 steps, memory and speed; at the 8B students'
#            shapes the less recompute each makes room for
#   options  master_weights = "stochastic" (-sr) against fp32 masters: at 1.24B the KD loss after 33 steps,
#            memory and speed; at the 8B students' shapes the less recompute it makes room for
#            (check predicts width 0.6: ~73 GiB, depth 0.5: ~66 GiB, against 69-71 with masters at 0.9)
#   topk     distill-width with [distill] teacher_logits = "cached" (top_k 64, gradient_checkpointing $TOPK_GC,
#            default 0.2) beside the recipe's live teacher, $TOPK_STEPS (20) steps each; TOPK_RUNS picks the variants
#            (default "live cached cached-again": the last, a second student reading the stored logits; also live-top64)
#   summary  benchmarks/scale_summary.py over the runs
# Needs: .carry/textkit-llama2 (benchmarks/pack_for_gpu.sh) and, where missing, pydantic and friends as wheels.
# SCALE_ARCH=tiny runs the same flow with a tiny model on the CPU (a smoke test of this script).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?OUT dir}; shift
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
ARCH=${SCALE_ARCH:-meta-llama/Llama-3.1-8B}
TEACHER=${TEACHER:-/dev/shm/llama31-8b-random}
if [[ -z ${RUNS:-} ]]; then  # the run directories: /root when its disk holds a 4.5B checkpoint beside the
  # models (~60 GiB), else a tmpfs in the 128 GiB of RAM; the choice is kept for the next calls
  if [[ -f /root/.scale-runs ]]; then RUNS=$(cat /root/.scale-runs)
  elif (( $(df -BG --output=avail /root | tail -1 | tr -dc 0-9) >= 70 )); then RUNS=/root/scale-runs
  else RUNS=/dev/shm/scale-runs; mount -o remount,size=120G /dev/shm 2>/dev/null; fi
  echo "$RUNS" > /root/.scale-runs 2>/dev/null
fi
KILL_AT=${KILL_AT:-20}
WIDTH_EXP=${WIDTH_EXP:-benchmarks/scale/width-80gb.toml}
WIDTH_RUN=$(sed -n 's/^name = "\(.*\)"/\1/p' "$WIDTH_EXP" | head -1)
CAP=${CAP:-79}
LOG="$OUT/scale.log"
EXTRA=(); WIDTH=(); DEPTH=(); SEARCH=()
if [[ $ARCH == tiny ]]; then  # CPU smoke test: small sequences, steps and targets
  EXTRA=(--set data.seq_length=64 --set eval.speed=false)
  WIDTH=(--set prune.width.ffn_hidden_size=96 --set prune.width.hidden_size=48 --set distill.steps=200
         --set prune.width.calibration_samples=16)
  DEPTH=(--set "prune.depth.drop_layers=[2,3]" --set distill.steps=8)
  SEARCH=(--set prune.search.calibration_samples=16 --set prune.search.hidden_multiple=16 --set prune.search.ffn_multiple=16)
fi
CARD_GIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1 | awk '{print int($1/1024)}')
if [[ -n $CARD_GIB && $CARD_GIB -lt 100 ]]; then  # an 80 GB card: the depth student with the 80 GB recipe too
  # (experiments/llama31-8b-one-gpu.toml, with 0.5 checkpointed: the depth row of RESULTS.md's stochastic table)
  DEPTH+=(--set distill.optimizer_states=bfloat16 --set distill.global_batch_size=4 --set distill.micro_batch_size=4
          --set distill.chunk_tokens=512 --set distill.master_weights=stochastic --set distill.gradient_checkpointing=0.5)
fi
DEPTH_KILL=(); grep -q '^name = "depth"' "$WIDTH_EXP" && DEPTH_KILL=("${DEPTH[@]}")  # it holds the depth student too (h200.toml)
read -ra MORE <<< "${SCALE_SETS:-}"  # e.g. SCALE_SETS="--set prune.search.screen_max=200" (word-split)
SETS=(--set "model.path=$TEACHER" --runs-dir "$RUNS" "${EXTRA[@]}" "${MORE[@]}")
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
engine() { python3 -m engine "$@" 2>&1 | grep --line-buffered -v -i "warn" | tee -a "$LOG"; return "${PIPESTATUS[0]}"; }

for PART in "$@"; do
  case $PART in
  memory)
    log "memory prediction"; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$LOG"
    df -h / /root /dev/shm 2>/dev/null | tee -a "$LOG"; free -g | tee -a "$LOG"
    timeout 400 python3 benchmarks/memory_prediction.py --cases "${MEMORY_CASES:-smollm2,1b}" --json "$OUT/memory.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
    ;;
  teacher)
    log "teacher $ARCH -> $TEACHER"
    /usr/bin/time -f "teacher: %e s, max RSS %M KB" python3 benchmarks/scratch_model.py --arch "$ARCH" \
      --tokenizer .carry/textkit-llama2/tokenizer --out "$TEACHER" 2>&1 | grep -v -i warn | tail -3 | tee -a "$LOG"
    ;;
  width)
    log "width: check for 79 GiB, then prune-width and distill-width until step $KILL_AT"
    engine check "$WIDTH_EXP" "${SETS[@]}" "${DEPTH_KILL[@]}" "${WIDTH[@]}" --gpu-memory "$CAP"
    SLIMLAB_GPU_MEMORY_CAP_GIB=$CAP python3 -m engine run "$WIDTH_EXP" "${SETS[@]}" "${DEPTH_KILL[@]}" "${WIDTH[@]}" \
      > "$OUT/width-run.log" 2>&1 &
    RUN_PID=$!
    M="$RUNS/$WIDTH_RUN/distill-width/metrics.jsonl"
    while kill -0 $RUN_PID 2>/dev/null; do
      if [[ -f $M ]] && python3 -c "import json,sys; l=[json.loads(x) for x in open('$M') if x.strip().endswith('}')]; sys.exit(0 if any(r.get('split')=='train' and r['step']>=$KILL_AT for r in l) else 1)"; then
        log "cancel at step >= $KILL_AT"; T0=$SECONDS
        engine cancel "$RUNS/$WIDTH_RUN"
        wait $RUN_PID; log "cancelled in $((SECONDS - T0)) s"; break
      fi
      sleep 2
    done
    wait $RUN_PID 2>/dev/null
    grep -v -i warn "$OUT/width-run.log" | tail -40 | tee -a "$LOG"
    ls -la "$RUNS/$WIDTH_RUN"/distill-width/checkpoints/* 2>&1 | tee -a "$LOG"; du -sh "$RUNS/$WIDTH_RUN"/distill-width/checkpoints 2>&1 | tee -a "$LOG"
    ;;
  resume)
    log "resume width"
    SLIMLAB_GPU_MEMORY_CAP_GIB=$CAP engine run "$WIDTH_EXP" "${SETS[@]}" "${DEPTH_KILL[@]}" "${WIDTH[@]}" \
      | grep --line-buffered -v -E "^\[(prune|distill)-[a-z]+\] +(step|calibrat)" | tail -80
    ;;
  depth)
    log "depth (H200 default precision)"
    engine check benchmarks/scale/depth-h200.toml "${SETS[@]}" "${DEPTH[@]}"
    engine run benchmarks/scale/depth-h200.toml "${SETS[@]}" "${DEPTH[@]}" | tail -60
    ;;
  h200)
    # the seed workload with the H200 recipe (benchmarks/scale/h200.toml: no recompute); H200_ONLY picks the
    # stages of this call, e.g. "--only prepare --only prune-width --only distill-width" (word-split)
    read -ra ONLY <<< "${H200_ONLY:-}"
    log "h200 recipe: ${H200_ONLY:-every stage}"
    engine check benchmarks/scale/h200.toml "${SETS[@]}" "${WIDTH[@]}" "${DEPTH[@]}"
    engine run benchmarks/scale/h200.toml "${SETS[@]}" "${WIDTH[@]}" "${DEPTH[@]}" "${ONLY[@]}" \
      | grep --line-buffered -E "memory|step (1|10|25|50)/|calibrated|done|rror|speed|decode" | tail -60
    ;;
  search)
    log "search at 0.56"
    engine check benchmarks/scale/search-0.56.toml "${SETS[@]}" "${SEARCH[@]}" | grep -v "^    [0-9]*L "
    engine run benchmarks/scale/search-0.56.toml "${SETS[@]}" "${SEARCH[@]}" | grep --line-buffered -v "^\[prune-search\] *[0-9]" | tail -40
    ;;
  graph)
    log "teacher_cuda_graph at the SmolLM2-135M shape"
    timeout 300 python3 benchmarks/distill_throughput.py --shape smollm2 --variants engine-compile,engine-compile-tgraph,engine,engine-tgraph \
      --json "$OUT/graph.json" 2>&1 | grep -v -i warn | tail -12 | tee -a "$LOG"
    ;;
  recompute)
    log "gradient_checkpointing 0.9 vs true at the 8B students' shapes"; nvidia-smi -L | tee -a "$LOG"
    for shape in ${RECOMPUTE_SHAPES:-8b-width 8b-depth}; do
      for v in ${RECOMPUTE_VARIANTS:-engine-compile-chunk512-gc0.9-bf16states engine-compile-chunk512-gc-bf16states}; do
        timeout "${RECOMPUTE_TIMEOUT:-150}" python3 benchmarks/distill_throughput.py --shape "$shape" --variants "$v" \
          --warmup 3 --steps "${RECOMPUTE_STEPS:-8}" --json "$OUT/recompute-$shape-$v.json" 2>&1 \
          | grep --line-buffered -v -i warn | grep --line-buffered -E "tok/s|FAILED|Error" | sed "s/^/$shape /" | tee -a "$LOG"
      done
    done
    ;;
  int8|options)
    if [[ $PART == int8 ]]; then  # 8-bit moments against the recipe's bf16 ones, and the recompute each makes room for
      W=8b-width:engine-compile-chunk512; D=8b-depth:engine-compile-chunk512
      : "${OPTIONS_1B:=engine-compile-bf16states-sr engine-compile-int8states-sr engine-compile-int8fused-sr}"
      # @GiB: under that cap (a 48 GB card holds ~44.5 GiB): check says only 8-bit moments fit there
      # (RESULTS.md "The seed workload on one H200": these, and $D-gc0.4-bf16states-sr in a second call)
      : "${OPTIONS_8B:=$W-gc0.6-bf16states-sr $W-gc0.2-int8states-sr $W-gc0.2-int8fused-sr $W-gc0.4-bf16states-sr $W-gc-int8states-sr@44.5 $W-gc-bf16states-sr@44.5 $D-gc0.5-bf16states-sr $D-gc0.2-int8states-sr $D-gc0.4-bf16states-sr}"
    fi
    log "$PART: precision and memory options"; nvidia-smi -L | tee -a "$LOG"
    for v in ${OPTIONS_1B:-engine-compile engine-compile-sr engine-compile-autocast engine-compile-bf16states-sr}; do
      timeout 150 python3 benchmarks/distill_throughput.py --variants "$v" --steps 30 --json "$OUT/options-1b-$v.json" 2>&1 \
        | grep --line-buffered -v -i warn | grep --line-buffered -E "tok/s|FAILED|Error" | sed "s/^/1b /" | tee -a "$LOG"
    done
    for sv in ${OPTIONS_8B:-8b-width:engine-compile-chunk512-gc0.6-bf16states-sr 8b-depth:engine-compile-chunk512-gc0.5-bf16states-sr}; do
      cap=; [[ $sv == *@* ]] && cap=${sv##*@} && sv=${sv%@*}
      SLIMLAB_GPU_MEMORY_CAP_GIB=$cap timeout 150 python3 benchmarks/distill_throughput.py --shape "${sv%%:*}" \
        --variants "${sv#*:}" --warmup 3 --steps 8 --json "$OUT/options-${sv%%:*}-${sv#*:}${cap:+-cap$cap}.json" 2>&1 \
        | grep --line-buffered -v -i warn | grep --line-buffered -E "tok/s|FAILED|Error|out of memory" \
        | sed "s/^/${sv%%:*}${cap:+ (cap $cap GiB)} /" | tee -a "$LOG"
    done
    ;;
  topk)
    # teacher_logits = "cached" against the live teacher, the width student of $WIDTH_EXP, $TOPK_STEPS steps each in
    # the same run directory (prune-width once): TOPK_RUNS names the distill-width variants, in order
    log "topk: prune-width, then distill-width: ${TOPK_RUNS:=live cached cached-again}"; nvidia-smi -L | tee -a "$LOG"
    STEPS=(--set distill.steps="${TOPK_STEPS:-20}" --set distill.val_interval=1000)
    engine run "$WIDTH_EXP" "${SETS[@]}" "${WIDTH[@]}" --only prepare --only prune-width | grep -E "succeeded|rror" | tail -5
    for V in $TOPK_RUNS; do
      case $V in
        live) VS=() ;;  # the recipe as it is: full-vocabulary KD, the teacher on the GPU
        live-top64) VS=(--set distill.top_k=64) ;;
        cached*) VS=(--set distill.top_k=64 --set distill.teacher_logits='"cached"'
                     --set distill.gradient_checkpointing="${TOPK_GC:-0.2}") ;;
      esac
      rm -rf "$RUNS/$WIDTH_RUN/distill-width"
      [[ $V == cached ]] && rm -rf "$RUNS/$WIDTH_RUN/teacher-topk"  # (cached-again: reads what cached wrote)
      log "distill-width $V ${VS[*]}"
      engine check "$WIDTH_EXP" "${SETS[@]}" "${WIDTH[@]}" "${STEPS[@]}" "${VS[@]}" --gpu-memory "$CAP" | grep -E "distill-width|disk"
      T0=$SECONDS
      SLIMLAB_GPU_MEMORY_CAP_GIB=$CAP engine run "$WIDTH_EXP" "${SETS[@]}" "${WIDTH[@]}" "${STEPS[@]}" "${VS[@]}" --only distill-width \
        | grep --line-buffered -E "memory|top-64|step (1|5|10|15|20|30|40|50)/|rror|succeeded" | tail -30
      log "distill-width $V: $((SECONDS - T0)) s"
      cp "$RUNS/$WIDTH_RUN/distill-width/metrics.jsonl" "$OUT/topk-$V-metrics.jsonl" 2>/dev/null
      cp "$RUNS/$WIDTH_RUN/distill-width/stdout.log" "$OUT/topk-$V.log" 2>/dev/null
      cp "$RUNS/$WIDTH_RUN/distill-width/status.json" "$OUT/topk-$V-status.json" 2>/dev/null
    done
    du -sh "$RUNS/$WIDTH_RUN/teacher-topk" 2>&1 | tee -a "$LOG"
    ;;
  summary)
    python3 benchmarks/scale_summary.py "$RUNS"/* --json "$OUT/summary.json" | tee -a "$LOG"
    for r in "$RUNS"/*; do [[ -f $r/eval/results.json ]] && cp "$r/eval/results.json" "$OUT/$(basename "$r")-results.json"; done
    for l in "$RUNS"/*/*/stdout.log; do cp "$l" "$OUT/$(basename "$(dirname "$(dirname "$l")")")-$(basename "$(dirname "$l")").log"; done
    for s in "$RUNS"/*/*/search.json; do [[ -f $s ]] && cp "$s" "$OUT/$(basename "$(dirname "$(dirname "$s")")")-search.json"; done
    du -sh "$RUNS"/*/* 2>/dev/null | tee -a "$LOG"
    ;;
  *) echo "unknown part $PART" >&2; exit 2 ;;
  esac
done
