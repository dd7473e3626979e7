"""Two nodes on one host (issue 16): two `slimlab-engine run` commands with launch.nodes = 2, machine_rank
0 and 1, rendezvous on 127.0.0.1, CPU processes talking gloo. A multi-node stage without GPUs runs one
accelerate process per node (engine/orchestration/launch.py). The result must equal a one-node run with
the same global batch: one process with 2 micro-batches of 2, because the data of a step is split by
(rank, world) into the same windows either way and DDP averages the gradients of the two halves as
accumulation does (cf. test_train_loop's 2-processes == 1-process test). The run goes to the end:
finetune, prune (node 0 only) and a distill stage, both training stages on the two nodes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _train_util import read_lines

from engine.orchestration.launch import free_port

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
[[prune]]
name = "d"
method = "depth"
num_layers = 1
[distill]
steps = 2
global_batch_size = 4
micro_batch_size = 2
val_interval = 2
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.slow
def test_two_nodes_on_one_host_equal_one_node(tmp_path: Path) -> None:
    f = tmp_path / "mn.toml"
    f.write_text(TOML.format(name="mn") + '[launch]\nnodes = 2\nmain_process_ip = "127.0.0.1"\n'
                 f"main_process_port = {free_port()}\n")  # a free port: CI runs side by side must not meet
    base = [sys.executable, "-m", "engine", "run", str(f), "--runs-dir", str(tmp_path / "runs")]
    procs = [subprocess.Popen(base + ["--set", f"launch.machine_rank={r}"], cwd=tmp_path, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = tmp_path / "runs"
    for stage in ("finetune", "distill-d"):
        assert "2 process(es), 1 micro-batch(es) of 2" in (runs / "mn" / stage / "stdout.log").read_text()
        assert (runs / "mn" / stage / "model" / "config.json").is_file()

    one = tmp_path / "one.toml"
    one.write_text(TOML.format(name="one"))
    # validation reads val_batches (5) micro-batches per process: twice as many on one process read
    # the same 20 windows as the two nodes do together
    out = subprocess.run([sys.executable, "-m", "engine", "run", str(one), "--runs-dir", str(tmp_path / "runs"),
                          "--set", "finetune.val_batches=10", "--set", "distill.val_batches=10"],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr

    def curve(name: str, stage: str) -> list[float]:  # training and validation losses
        return [r["loss"] for r in read_lines(runs / name / stage / "metrics.jsonl") if "loss" in r]

    for stage, steps in (("finetune", 3), ("distill-d", 2)):
        assert sum(r.get("split") != "val" for r in read_lines(runs / "mn" / stage / "metrics.jsonl")
                   if "loss" in r) == steps
        assert curve("mn", stage) == pytest.approx(curve("one", stage), rel=1e-4)

    # the windows each rank read, from the dataset's own (rank, world) split on the run's data: per
    # step the two ranks read disjoint halves of what the one process reads (training and validation)
    from engine.data import PackedDataset

    data = runs / "mn" / "prepare"
    for split, seed, n in (("train", 1234, 3 * 2), ("validation", 0, 10)):
        ranks = [PackedDataset(data, split, 16, seed, r, 2) for r in (0, 1)]
        one_ds = PackedDataset(data, split, 16, seed)
        for step in range(n // 2):
            seen = [{ds.window_index(k) for k in range(2 * step, 2 * step + 2)} for ds in ranks]
            assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) == 2
            assert seen[0] | seen[1] == {one_ds.window_index(k) for k in range(4 * step, 4 * step + 4)}
