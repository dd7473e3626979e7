"""Two nodes on one host (issue 16): two `slimlab-engine run` commands with launch.nodes = 2, machine_rank
0 and 1, rendezvous on 127.0.0.1, CPU processes talking gloo. A multi-node stage without GPUs runs one
accelerate process per node (engine/orchestration/launch.py). The result must equal a one-node run with
the same global batch: one process with 2 micro-batches of 2, because the data of a step is split by
(rank, world) into the same windows either way and DDP averages the gradients of the two halves as
accumulation does (cf. test_train_loop's 2-processes == 1-process test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _train_util import read_lines

ROOT = Path(__file__).resolve().parent.parent

TOML = """
name = "{name}"
[model]
init = "scratch"
dtype = "float32"
arch = {{model_type = "llama", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2, num_attention_heads = 2, num_key_value_heads = 1}}
tokenizer_train_vocab = 512
[data]
dataset = "builtin:stdlib-docs"
seq_length = 16
[finetune]
steps = 3
global_batch_size = 4
micro_batch_size = 2
val_interval = 3
checkpoint_interval = 2
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.slow
def test_two_nodes_on_one_host_equal_one_node(tmp_path: Path) -> None:
    f = tmp_path / "mn.toml"
    f.write_text(TOML.format(name="mn") + '[launch]\nnodes = 2\nmain_process_ip = "127.0.0.1"\n'
                 "main_process_port = 29631\n")
    base = [sys.executable, "-m", "engine", "run", str(f), "--runs-dir", str(tmp_path / "runs")]
    procs = [subprocess.Popen(base + ["--set", f"launch.machine_rank={r}"], cwd=tmp_path, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "2 process(es), 1 micro-batch(es) of 2" in (tmp_path / "runs" / "mn" / "finetune" / "stdout.log").read_text()

    one = tmp_path / "one.toml"
    one.write_text(TOML.format(name="one"))
    out = subprocess.run([sys.executable, "-m", "engine", "run", str(one), "--runs-dir", str(tmp_path / "runs")],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr

    def curve(name: str) -> list[float]:
        return [r["loss"] for r in read_lines(tmp_path / "runs" / name / "finetune" / "metrics.jsonl")]

    assert curve("mn") == pytest.approx(curve("one"), rel=1e-4)
