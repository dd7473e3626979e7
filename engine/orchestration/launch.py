"""Commands that start one stage process: `accelerate launch ... -m engine <kind> ...` or plain python.

Nothing here imports torch: GPUs are found through CUDA_VISIBLE_DEVICES or `nvidia-smi -L`, so the
orchestrator and the TUI start fast. GPU ids are the indices a process of this machine sees
(the positions inside CUDA_VISIBLE_DEVICES when it is set, like torch's `cuda:N`).
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import Experiment
from engine.contract.engine_env import engine_pythonpath
from engine.errors import ConfigError
from engine.stages import kind_of, stage_kind

# Set by the sbatch script that `run --slurm` writes: multi-node stages go through srun.
LAUNCHER_ENV = "SLIMLAB_LAUNCHER"
ACCELERATE_LAUNCH = "engine.orchestration.accelerate_launch"  # run with `python -m` (it imports torch)


# ---- GPUs -------------------------------------------------------------------------------


GPUS_ENV = "SLIMLAB_GPUS"  # the orchestrator's ids of a stage's GPUs, recorded in the stage's status.json


def visible_devices() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list of tokens (indices or UUIDs), or None when it is not set."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return None
    tokens = [t.strip() for t in env.split(",") if t.strip()]
    # CUDA stops at the first invalid entry ("-1" is the usual way to hide every GPU)
    out: list[str] = []
    for t in tokens:
        if t.startswith("-"):
            break
        out.append(t)
    return out


def stage_gpu_ids() -> list[int]:
    """The GPU ids a stage records in its status.json: the orchestrator's (GPUS_ENV), so that the
    stage and the run's status.json agree; a stage started by hand records the indices it sees."""
    given = os.environ.get(GPUS_ENV)
    if given is not None:
        return [int(g) for g in given.split(",") if g.strip().isdigit()]
    return detect_gpus() if visible_devices() is not None else []


def detect_gpus() -> list[int]:
    """Indices of the GPUs this process can use; [] on a machine without (usable) GPUs."""
    tokens = visible_devices()
    if tokens is not None:
        return list(range(len(tokens)))
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    count = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    return list(range(count))


def gpu_ids_arg(gpus: list[int]) -> str:
    """The --gpu_ids value (becomes CUDA_VISIBLE_DEVICES of the workers): our indices mapped back
    through an inherited CUDA_VISIBLE_DEVICES, so `--gpus 0` under CUDA_VISIBLE_DEVICES=2,3 means GPU 2."""
    tokens = visible_devices()
    if tokens is None:
        return ",".join(str(g) for g in gpus)
    return ",".join(tokens[g] for g in gpus)


def parse_gpus(text: str) -> list[int]:
    """`--gpus 0,1,2` | `0-3` | `none`/`cpu` (run on the CPU)."""
    text = text.strip().lower()
    if text in ("none", "cpu", ""):
        return []
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-", 1)
                if int(hi) < int(lo):  # an empty range ran everything on the CPU
                    raise ConfigError(f"--gpus: '{part}' is an empty range; write the lower index first, "
                                      f"e.g. --gpus {hi}-{lo}")
                out += list(range(int(lo), int(hi) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise ConfigError(f"--gpus: '{text}' is not a GPU list; write e.g. --gpus 0,1 or --gpus 0-3 or --gpus none") from None
    if len(set(out)) != len(out) or any(g < 0 for g in out):
        raise ConfigError(f"--gpus: '{text}' lists a GPU twice or a negative index")
    return out


def gpu_pool(exp: Experiment, cli_gpus: list[int] | None, available: list[int]) -> list[int]:
    """The GPUs this run may use: --gpus, else [launch].gpus ('all' = every detected GPU)."""
    if cli_gpus is not None:
        wanted, where = cli_gpus, "--gpus"
    elif exp.launch.gpus == "all":
        return list(available)
    else:
        wanted, where = list(exp.launch.gpus), "launch.gpus"
    _check_present(wanted, available, where, exp)
    return wanted


def stage_gpus(exp: Experiment, stage: str, pool: list[int], available: list[int]) -> list[int]:
    """The GPUs one stage runs on: [launch].stage_gpus[stage], else the pool, cut to what the kind uses."""
    if stage in exp.launch.stage_gpus:
        gpus = list(exp.launch.stage_gpus[stage])
        _check_present(gpus, available, f"launch.stage_gpus.{stage}", exp)
    else:
        gpus = list(pool)
    want = kind_of(stage).processes
    return gpus if want is None else gpus[:want]


def _check_present(wanted: list[int], available: list[int], where: str, exp: Experiment) -> None:
    missing = [g for g in wanted if g not in available]
    if missing:
        have = ", ".join(map(str, available)) if available else "none"
        raise ConfigError(f"{exp.source}: {where}: GPU {missing[0]} is not on this machine (it has: {have}); "
                          "fix the list, or pass --gpus (e.g. --gpus 0,1, or --gpus none for the CPU)")


def free_port() -> int:
    """A TCP port nobody listens on now (rendezvous of a single-node multi-process stage)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- one stage's command ----------------------------------------------------------------


@dataclass
class StageCommand:
    stage: str
    argv: list[str]
    gpus: list[int]
    env: dict[str, str] = field(default_factory=dict)  # added to os.environ

    def shell(self) -> str:
        return shlex.join(self.argv)


def launch_env() -> dict[str, str]:
    """Environment every stage process gets on top of ours."""
    return {
        "NCCL_NVLS_ENABLE": "0",  # NVLink SHARP multicast hangs on some hosts; plain NCCL rings instead
        "PYTHONUNBUFFERED": "1",  # stdout.log follows the stage live
        "PYTHONPATH": engine_pythonpath(),
    }


def engine_args(stage: str, toml_path: str | Path, runs_dir: str | Path) -> list[str]:
    return [stage_kind(stage), str(toml_path), "--stage", stage, "--runs-dir", str(runs_dir)]


def accelerate_args(exp: Experiment, gpus: list[int], *, port: int, nodes: int = 1,
                    machine_rank: str | int | None = None, main_process_ip: str | None = None,
                    gpu_ids: bool = True) -> list[str]:
    """`accelerate launch` options (without the program) for `gpus` on each of `nodes` machines (no GPUs:
    one CPU process per machine, gloo)."""
    total = max(1, len(gpus)) * nodes
    args = ["--num_processes", str(total)]
    if gpu_ids and gpus:
        args += ["--gpu_ids", gpu_ids_arg(gpus)]
    args += ["--mixed_precision", exp.launch.mixed_precision, "--dynamo_backend", "no"]
    if total > 1:
        args.append("--multi_gpu")
    if nodes == 1:
        args += ["--num_machines", "1"]  # said explicitly, or accelerate warns that it assumed it
    else:
        args += ["--num_machines", str(nodes),
                 "--machine_rank", str(exp.launch.machine_rank if machine_rank is None else machine_rank),
                 "--main_process_ip", str(main_process_ip or exp.launch.main_process_ip)]
    args += ["--main_process_port", str(port)]
    return args


def build_stage_command(exp: Experiment, stage: str, toml_path: str | Path, runs_dir: str | Path,
                        gpus: list[int], *, port: int | None = None, python: str | None = None,
                        launcher: str | None = None) -> StageCommand:
    """The command of one stage process.

    No GPUs: `python -m engine <kind> FILE --stage S`. GPUs: `accelerate launch` with one process
    per GPU (and per node when [launch].nodes > 1). Inside a Slurm job written by `run --slurm`
    (SLIMLAB_LAUNCHER=srun), multi-node stages run `accelerate launch` on every node through srun,
    each node taking its machine rank from SLURM_NODEID.
    """
    python = python or sys.executable
    launcher = launcher if launcher is not None else os.environ.get(LAUNCHER_ENV, "")
    prog = engine_args(stage, toml_path, runs_dir)
    nodes = exp.launch.nodes if kind_of(stage).multi_node else 1
    env = {**launch_env(), GPUS_ENV: ",".join(map(str, gpus))}
    if not gpus and nodes == 1:
        return StageCommand(stage, [python, "-m", "engine", *prog], [], env)
    if nodes > 1:
        port = exp.launch.main_process_port if port is None else port
    elif port is None:
        port = free_port()
    accel = [python, "-m", ACCELERATE_LAUNCH]  # `accelerate launch`, its traceback on a rank's exit left out
    if nodes > 1 and launcher == "srun":
        # each node uses the GPUs Slurm gave it (its own CUDA_VISIBLE_DEVICES), hence no --gpu_ids
        inner = accel + accelerate_args(exp, gpus, port=port, nodes=nodes, machine_rank="$SLURM_NODEID",
                                        gpu_ids=False)
        inner += ["--module", "engine", *prog]
        # $SLURM_NODEID must expand on each node, so it stays unquoted inside the bash -c line
        script = "exec " + shlex.join(inner).replace("'$SLURM_NODEID'", '"$SLURM_NODEID"')
        argv = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash", "-c", script]
        return StageCommand(stage, argv, gpus, env)
    argv = accel + accelerate_args(exp, gpus, port=port, nodes=nodes) + ["--module", "engine", *prog]
    return StageCommand(stage, argv, gpus, env)


def stage_processes(pid: int) -> list[int]:
    """The engine processes (the ranks) under a stage's launcher `pid`, or [pid] when there are none yet
    (or the stage runs without a launcher).

    A stop request goes to these, not to `accelerate launch`: on SIGTERM accelerate's simple launcher
    terminates its child and kills it 5 seconds later (accelerate 1.15-1.16, commands/launch.py
    _terminate_process_tree), which cut a 4.5B student's checkpoint short and lost the work (H100,
    benchmarks/RESULTS.md "8B on one GPU"). A rank that gets it finishes its step, saves, and exits."""
    import psutil

    try:
        found = []
        for child in psutil.Process(pid).children(recursive=True):
            args = child.cmdline()
            if any(a == "-m" and b == "engine" for a, b in zip(args, args[1:], strict=False)):
                found.append(child.pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return [pid]
    return found or [pid]
