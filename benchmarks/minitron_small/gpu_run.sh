#!/usr/bin/env bash
# The device calls behind the minitron-small results (issue 7):
#   gpu_run.sh start     install carried wheels, start the pipeline detached, watch it
#   gpu_run.sh watch     keep watching (the detached run survives between calls)
#   gpu_run.sh collect   pack metrics, results and logs into $OUT
set -uo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
EXP=benchmarks/minitron_small/experiment.toml
RUN=runs/minitron-small
WAIT=${WAIT:-540}
case ${1:-start} in
  start) nvidia-smi -L; python3 -m engine run $EXP --detach ;;
esac
if [[ ${1:-start} != collect ]]; then
  end=$((SECONDS + WAIT))
  while (( SECONDS < end )); do
    st=$(python3 -c "import json;d=json.load(open('$RUN/status.json'));print(d.get('state'))" 2>/dev/null)
    [[ $st == succeeded || $st == failed || $st == cancelled ]] && break
    sleep 10
  done
fi
python3 -m engine status $RUN
for s in $RUN/*/stdout.log; do echo "--- $s"; grep -E "tok/s|tokens/s|error|Error|succeeded|params" "$s" | tail -3; done
if [[ -n ${OUT:-} ]]; then
  tar czf $OUT/minitron_small.tgz $RUN/status.json $RUN/experiment.toml $RUN/*/status.json $RUN/*/metrics.jsonl \
    $RUN/*/stdout.log $RUN/*/importance.json $RUN/eval/results.json $RUN/*/model/config.json $RUN/orchestrator.log 2>/dev/null
fi
