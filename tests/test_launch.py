"""Stage commands: GPU detection without torch, accelerate launch lines, Slurm batch scripts."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.launch import launch_command_parser

from engine.config import ConfigError, loads_experiment
from engine.orchestration.launch import (
    ACCELERATE_LAUNCH,
    build_stage_command,
    detect_gpus,
    gpu_ids_arg,
    gpu_pool,
    parse_gpus,
    stage_gpus,
)
from engine.orchestration.slurm import sbatch_script

TOML = """
name = "lx"
[model]
path = "some/model"
[data]
dataset = "builtin:stdlib-docs"
[finetune]
steps = 3
[[prune]]
name = "depth"
method = "depth"
num_layers = 2
[[prune]]
name = "width"
method = "width"
hidden_size = 32
[distill]
steps = 3
[eval]
"""


def _exp(*overrides: str):
    return loads_experiment(TOML, "lx.toml", tuple(overrides))


def _accel(argv: list[str]):
    """Parse an accelerate command line with accelerate's own parser."""
    i = argv.index(ACCELERATE_LAUNCH)
    return launch_command_parser().parse_args(argv[i + 1:])


# ---- GPU detection ----------------------------------------------------------------------------


def test_detect_gpus_from_cuda_visible_devices(monkeypatch):
    for env, want in (("0,1", [0, 1]), ("2,3,5", [0, 1, 2]), ("", []), ("-1", []), ("1,-1,2", [0]),
                      ("GPU-aaa,GPU-bbb", [0, 1])):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
        assert detect_gpus() == want, env


def test_detect_gpus_from_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\n"
                    "echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)'\n"
                    "echo '  MIG 3g.40gb     Device  0: (UUID: MIG-1)'\n"
                    "echo 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert detect_gpus() == [0, 1]
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert detect_gpus() == []
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert detect_gpus() == []


def test_gpu_ids_map_through_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert gpu_ids_arg([1, 2]) == "5,6"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_ids_arg([1, 2]) == "1,2"


def test_stage_status_records_the_orchestrators_gpu_ids(monkeypatch, tmp_path):
    """Under CUDA_VISIBLE_DEVICES=4,5,6,7 (or UUIDs) `--gpus 1,2` starts a stage on GPUs 5,6; its
    status.json says [1, 2] like the run's status.json, not the physical ids (nor nothing for UUIDs)."""
    from engine.contract import RunLayout, read_json
    from engine.orchestration.stage_process import run_stage

    exp = _exp()
    for visible in ("4,5,6,7", "GPU-a1,GPU-b2,GPU-c3,GPU-d4"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        cmd = build_stage_command(exp, "finetune", "lx.toml", "runs", [1, 2], port=1234)
        assert _accel(cmd.argv).gpu_ids == ",".join(visible.split(",")[1:3])
        layout = RunLayout(tmp_path / visible)
        # the stage process: accelerate narrows CUDA_VISIBLE_DEVICES to the two GPUs it was given
        monkeypatch.setattr(os, "environ", {**os.environ, **cmd.env,
                                            "CUDA_VISIBLE_DEVICES": _accel(cmd.argv).gpu_ids})
        assert run_stage(exp, "finetune", lambda ctx: None, layout) == 0
        monkeypatch.undo()
        assert read_json(layout.stage_status_file("finetune"))["gpus"] == [1, 2], visible
    # a stage started by hand (no orchestrator) records the indices it sees, UUIDs too
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-a1,GPU-b2")
    monkeypatch.delenv("SLIMLAB_GPUS", raising=False)
    layout = RunLayout(tmp_path / "by-hand")
    assert run_stage(exp, "finetune", lambda ctx: None, layout) == 0
    assert read_json(layout.stage_status_file("finetune"))["gpus"] == [0, 1]


def test_parse_gpus():
    assert parse_gpus("0,1") == [0, 1]
    assert parse_gpus("0-3") == [0, 1, 2, 3]
    assert parse_gpus("none") == [] and parse_gpus("cpu") == []
    with pytest.raises(ConfigError, match="--gpus: 'a,b' is not a GPU list"):
        parse_gpus("a,b")
    with pytest.raises(ConfigError, match="twice"):
        parse_gpus("1,1")


def test_gpu_pool_and_stage_gpus():
    exp = _exp("launch.gpus=[0,1,2,3]", 'launch.stage_gpus={"distill-width" = [2, 3]}')
    avail = list(range(8))
    pool = gpu_pool(exp, None, avail)
    assert pool == [0, 1, 2, 3]
    assert gpu_pool(exp, [5, 6], avail) == [5, 6]  # --gpus wins over the file
    assert stage_gpus(exp, "distill-depth", pool, avail) == [0, 1, 2, 3]
    assert stage_gpus(exp, "distill-width", pool, avail) == [2, 3]
    assert stage_gpus(exp, "prune-width", pool, avail) == [0]  # one GPU is enough to prune
    assert stage_gpus(exp, "prepare", pool, avail) == []  # tokenising is CPU work
    assert gpu_pool(_exp(), None, []) == []  # "all" on a machine without GPUs: the CPU
    with pytest.raises(ConfigError, match=r"launch.gpus: GPU 2 is not on this machine \(it has: 0, 1\)"):
        gpu_pool(exp, None, [0, 1])


# ---- stage commands -----------------------------------------------------------------------------


def test_cpu_stage_is_plain_python():
    cmd = build_stage_command(_exp(), "finetune", "/r/lx/experiment.toml", "/r", [])
    assert cmd.argv == [sys.executable, "-m", "engine", "finetune", "/r/lx/experiment.toml",
                        "--stage", "finetune", "--runs-dir", "/r"]
    assert cmd.env["NCCL_NVLS_ENABLE"] == "0"


def test_single_gpu_stage():
    cmd = build_stage_command(_exp(), "prune-width", "/r/lx/experiment.toml", "/r", [3], port=1234)
    a = _accel(cmd.argv)
    assert (a.num_processes, a.gpu_ids, a.multi_gpu, a.main_process_port) == (1, "3", False, 1234)
    assert a.module and a.training_script == "engine"
    assert a.training_script_args == ["prune", "/r/lx/experiment.toml", "--stage", "prune-width", "--runs-dir", "/r"]
    assert cmd.env["NCCL_NVLS_ENABLE"] == "0"


def test_multi_gpu_stage():
    cmd = build_stage_command(_exp("launch.mixed_precision=\"bf16\""), "distill-depth", "/r/lx/experiment.toml",
                              "/r", [0, 1, 2, 3], port=29511)
    a = _accel(cmd.argv)
    assert (a.num_processes, a.gpu_ids, a.multi_gpu, a.mixed_precision) == (4, "0,1,2,3", True, "bf16")
    assert a.num_machines in (None, 1) and a.main_process_port == 29511
    assert a.training_script_args[:2] == ["distill", "/r/lx/experiment.toml"]


def test_free_port_for_concurrent_stages():
    a = _accel(build_stage_command(_exp(), "distill-depth", "/x.toml", "/r", [0, 1]).argv)
    assert 0 < a.main_process_port < 65536


def test_multi_node_stage():
    exp = _exp("launch.nodes=2", "launch.machine_rank=1", 'launch.main_process_ip="10.1.2.3"',
               "launch.main_process_port=29600")
    a = _accel(build_stage_command(exp, "finetune", "/x.toml", "/r", [0, 1, 2, 3, 4, 5, 6, 7]).argv)
    assert (a.num_processes, a.num_machines, a.machine_rank, a.main_process_ip, a.main_process_port) == \
        (16, 2, 1, "10.1.2.3", 29600)
    assert a.multi_gpu
    # evaluation stays on node 0, one GPU
    a = _accel(build_stage_command(exp, "eval", "/x.toml", "/r", [0]).argv)
    assert a.num_processes == 1 and a.num_machines in (None, 1)


def test_each_node_keeps_its_own_rank_through_the_shared_experiment_file(tmp_path):
    """Nodes of a run on one disk (one host, or a shared file system) write the same <run>/experiment.toml:
    a node that read back the other's rank between its write and its read became a second node 0, and
    the rendezvous failed (EADDRINUSE). Here node 1 writes, then node 0, then node 1 again: the file is the
    same whoever wrote it last, and each keeps its own rank."""
    from engine.contract import RunLayout
    from engine.orchestration.run import write_experiment

    nodes = [_exp("launch.nodes=2", f"launch.machine_rank={r}", 'launch.main_process_ip="127.0.0.1"')
             for r in (0, 1)]
    layout = RunLayout(tmp_path / "run")
    texts = []
    for r in (1, 0, 1):
        again = write_experiment(nodes[r], layout)
        assert again.launch.machine_rank == r
        texts.append(layout.experiment_file.read_text().split("\n", 1)[1])  # (the header's time differs)
    assert texts[0] == texts[1] == texts[2]


def test_srun_stage_takes_its_rank_from_slurm(tmp_path):
    exp = _exp("launch.nodes=4", 'launch.main_process_ip="node-a"')
    cmd = build_stage_command(exp, "distill-width", "/r/lx/experiment.toml", "/r", [0, 1], launcher="srun")
    assert cmd.argv[:5] == ["srun", "--nodes=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash"]
    script = cmd.argv[-1]
    # what each node runs: expand the line as bash would there, then parse it as accelerate does
    printed = subprocess.run(["bash", "-c", script.replace("exec ", "printf '%s\\n' ", 1)],
                             env={**os.environ, "SLURM_NODEID": "3"}, capture_output=True, text=True, check=True)
    argv = printed.stdout.splitlines()
    a = _accel(argv)
    assert (a.num_processes, a.num_machines, a.machine_rank, a.main_process_ip) == (8, 4, 3, "node-a")
    assert a.gpu_ids in (None, "all")  # each node uses the GPUs Slurm gave it


# ---- Slurm --------------------------------------------------------------------------------------


def test_sbatch_script_rendezvous(tmp_path):
    exp = _exp("launch.nodes=2", 'launch.main_process_ip="placeholder"', "launch.main_process_port=29777")
    # stand-ins for the cluster tools and python, to run the script as a node would
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "scontrol").write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "gpu-017\\ngpu-018\\n"\n')
    fake_py = bindir / "python"
    fake_py.write_text('#!/bin/sh\necho "MASTER_ADDR=$MASTER_ADDR NVLS=$NCCL_NVLS_ENABLE L=$SLIMLAB_LAUNCHER"\n'
                       'for a in "$@"; do echo "ARG $a"; done\n')
    for f in bindir.iterdir():
        f.chmod(0o755)
    script = sbatch_script(exp, "/runs/lx/experiment.toml", "/runs", 8, python=str(fake_py), workdir=tmp_path,
                           extra_sbatch=["--partition=gpu"])
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for want in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --partition=gpu", "#SBATCH --job-name=slimlab-lx"):
        assert want in lines
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    out = subprocess.run(["bash", str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
                              "SLURM_JOB_NODELIST": "gpu-[017-018]"}).stdout.splitlines()
    assert out[0] == "MASTER_ADDR=gpu-017 NVLS=0 L=srun"
    args = [x[4:] for x in out[1:]]
    assert args[:4] == ["-m", "engine", "run", "/runs/lx/experiment.toml"]
    joined = shlex.join(args)
    assert "launch.main_process_ip=gpu-017" in joined and "launch.main_process_port=29777" in joined


def test_run_slurm_writes_the_script(tmp_path, capsys):
    from engine.cli import main

    f = tmp_path / "x.toml"
    f.write_text(TOML)
    rc = main(["run", str(f), "--slurm", "--runs-dir", str(tmp_path / "runs"), "--set", "launch.nodes=3",
               "--gpus-per-node", "4"])
    assert rc == 0
    script = (tmp_path / "runs" / "lx" / "slurm.sbatch").read_text()
    assert "#SBATCH --nodes=3" in script and "#SBATCH --gpus-per-node=4" in script
    assert (tmp_path / "runs" / "lx" / "experiment.toml").exists()
    assert "sbatch " in capsys.readouterr().out
    # on a machine without GPUs and gpus = "all", the GPU count must be given
    rc = main(["run", str(f), "--slurm", "--runs-dir", str(tmp_path / "runs2"), "--gpus", "none"])
    assert rc == 2 and "--gpus-per-node" in capsys.readouterr().err


def test_engine_launch_does_not_import_torch():
    code = ("import sys, engine.orchestration.launch, engine.orchestration.run, engine.orchestration.slurm, engine.orchestration.commands, engine.compare, engine.orchestration.cancel; "
            "bad = [m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"


def test_slimlab_engine_override_is_split_like_a_shell(monkeypatch):
    from app.data.launch import engine_command

    monkeypatch.setenv("SLIMLAB_ENGINE", "'/opt/my envs/bin/python' -m engine")
    assert engine_command() == ["/opt/my envs/bin/python", "-m", "engine"]


def test_stage_and_tui_processes_import_this_engine(monkeypatch, tmp_path):
    """One PYTHONPATH builder: this checkout first, then the inherited path."""
    from app.data.launch import _env
    from engine.orchestration.launch import launch_env

    root = str(Path(__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert launch_env()["PYTHONPATH"] == _env()["PYTHONPATH"] == os.pathsep.join([root, "/elsewhere"])
    out = subprocess.run([sys.executable, "-c", "import engine; print(engine.__file__)"], cwd=tmp_path,
                         env={**os.environ, **launch_env()}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(Path(root) / "engine" / "__init__.py")
