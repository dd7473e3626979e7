"""The generated Slurm script end to end (issue 16), under stub `sbatch`, `srun` and `scontrol` that run it
on this host: `slimlab-engine run --slurm --submit` writes `<run>/slurm.sbatch` and "submits" it; the
script runs the pipeline with node 0 as the orchestrator, and the training stage goes through
`srun --nodes=2 ... bash -c 'accelerate launch ... --machine_rank $SLURM_NODEID ...'`, which the stub
runs twice at once (SLURM_NODEID 0 and 1): two CPU processes talking gloo over localhost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _train_util import read_lines

from engine.orchestration.launch import free_port

ROOT = Path(__file__).resolve().parent.parent

TOML = """
name = "sl"
[model]
init = "scratch"
dtype = "float32"
arch = {model_type = "llama", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2, num_attention_heads = 2, num_key_value_heads = 1}
tokenizer_train_vocab = 512
[data]
dataset = "builtin:stdlib-docs"
seq_length = 16
[finetune]
steps = 2
global_batch_size = 4
micro_batch_size = 2
val_interval = 2
[launch]
nodes = 2
main_process_port = {port}
"""

# sbatch FILE: runs the job here at once (Slurm's variables set, output to its --output file with %j = 1)
SBATCH = r"""#!/bin/bash
set -u
script="$1"
nodes=$(sed -n 's/^#SBATCH --nodes=//p' "$script")
out=$(sed -n 's/^#SBATCH --output=//p' "$script" | sed 's/%j/1/g')
mkdir -p "$(dirname "$out")"
SLURM_JOB_ID=1 SLURM_JOB_NODELIST=localhost SLURM_NNODES="$nodes" SLURM_NODEID=0 bash "$script" >"$out" 2>&1
rc=$?
echo "Submitted batch job 1"
exit $rc
"""

# scontrol show hostnames LIST: one localhost per node
SCONTROL = r"""#!/bin/bash
[ "$1 $2" = "show hostnames" ] || { echo "scontrol stub: $*" >&2; exit 2; }
for _ in $(seq "${SLURM_NNODES:-1}"); do echo localhost; done
"""

# srun --nodes=N [options] CMD...: CMD on N "nodes" at once, SLURM_NODEID=0..N-1; the worst exit code
SRUN = r"""#!/bin/bash
n=1
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes=*) n="${1#--nodes=}"; shift ;;
    -*) shift ;;
    *) break ;;
  esac
done
pids=()
for i in $(seq 0 $((n - 1))); do
  SLURM_NODEID=$i SLURM_PROCID=$i SLURM_LOCALID=0 "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


@pytest.mark.slow
def test_slurm_script_runs_end_to_end_under_stubs(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", SBATCH), ("scontrol", SCONTROL), ("srun", SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    f = tmp_path / "sl.toml"
    f.write_text(TOML.replace("{port}", str(free_port())))  # free: CI runs side by side must not meet
    runs = tmp_path / "runs"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-m", "engine", "run", str(f), "--runs-dir", str(runs), "--slurm",
                          "--submit", "--gpus-per-node", "1"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    run = runs / "sl"
    log = run / "slurm-1.log"
    job = log.read_text() if log.is_file() else "(no job log)"
    assert out.returncode == 0, out.stdout + out.stderr + job
    assert "Submitted batch job 1" in out.stdout

    script = (run / "slurm.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --gpus-per-node=1" in script
    assert json.loads((run / "status.json").read_text())["state"] == "succeeded", job
    for stage in ("prepare", "finetune"):
        assert json.loads((run / stage / "status.json").read_text())["state"] == "succeeded"
    assert (run / "experiment.toml").is_file() and (run / "prepare" / "meta.json").is_file()
    assert (run / "finetune" / "model" / "config.json").is_file()
    # the training stage ran as two processes, one per stub node, through srun
    stage_log = (run / "finetune" / "stdout.log").read_text()
    assert "$ srun --nodes=2 " in stage_log and '--machine_rank "$SLURM_NODEID"' in stage_log
    assert "2 process(es), 1 micro-batch(es) of 2" in stage_log
    assert sum(r.get("split") != "val" for r in read_lines(run / "finetune" / "metrics.jsonl") if "loss" in r) == 2
