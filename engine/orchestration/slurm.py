"""`slimlab-engine run --slurm`: a batch script that runs the whole pipeline on [launch].nodes nodes."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from engine.config import Experiment
from engine.contract import (
    RunLayout,
    write_atomic,
)
from engine.errors import ConfigError
from engine.orchestration.launch import (
    LAUNCHER_ENV,
    detect_gpus,
)
from engine.orchestration.run import RunOptions, check_not_busy, load_for_run, write_experiment


def write_slurm(opts: RunOptions, submit: bool, gpus_per_node: int | None, extra_sbatch: list[str]) -> int:
    from engine.config import read_toml

    raw = read_toml(opts.file)
    launch = raw.get("launch") if isinstance(raw.get("launch"), dict) else {}
    overrides = list(opts.overrides)
    nodes_set = any(o.split("=", 1)[0].strip() == "launch.nodes" for o in overrides)
    if (launch.get("nodes", 1) > 1 or nodes_set) and not launch.get("main_process_ip"):
        # the address of node 0 is only known inside the job; the script passes $MASTER_ADDR
        overrides.append("launch.main_process_ip=slurm-node-0")
    exp = load_for_run(RunOptions(**{**opts.__dict__, "overrides": overrides}))
    layout = RunLayout(exp.run_dir)
    check_not_busy(layout)
    given = gpus_per_node
    if gpus_per_node is None:
        if opts.gpus is not None:
            gpus_per_node = len(opts.gpus)
        elif exp.launch.gpus != "all":
            gpus_per_node = len(exp.launch.gpus)
        else:
            gpus_per_node = len(detect_gpus())
    if given is not None and given < 1:
        raise ConfigError(f"--gpus-per-node: {given}; give the number of GPUs on each node, 1 or more")
    if gpus_per_node < 1:
        raise ConfigError(f"{exp.source}: --slurm: cannot tell how many GPUs each node has (launch.gpus = \"all\" "
                          "and none on this machine); pass --gpus-per-node N")
    # the script first: a value it cannot hold safely is refused before anything is written
    script = sbatch_script(exp, layout.experiment_file.resolve(), layout.root.resolve().parent, gpus_per_node,
                           extra_sbatch=extra_sbatch)
    exp = write_experiment(exp, layout)
    path = layout.root / "slurm.sbatch"
    write_atomic(path, script)
    os.chmod(path, 0o755)
    print(f"wrote {path}  ({exp.launch.nodes} node(s) x {gpus_per_node} GPU(s))")
    if not submit:
        print(f"submit with: sbatch {path}")
        return 0
    if shutil.which("sbatch") is None:
        raise ConfigError(f"--submit: sbatch not found on this machine; submit on a Slurm login node: sbatch {path}")
    out = subprocess.run(["sbatch", str(path)], capture_output=True, text=True, check=False)
    sys.stdout.write(out.stdout)
    if out.returncode != 0:
        print(f"error: sbatch failed: {out.stderr.strip()}", file=sys.stderr)
        return 1
    return 0


def _plain(value: str, what: str) -> str:
    """`value`, refused when it holds a control character: a newline in a path would start a new line of the
    script, which bash runs."""
    bad = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ConfigError(f"{what}: {value!r} contains a control character ({bad!r}); a Slurm script cannot "
                          "hold it safely; rename it")
    return value


def _directive(value: str, what: str) -> str:
    """An #SBATCH option's value: sbatch splits on whitespace unless the value is double-quoted."""
    _plain(value, what)
    if '"' in value:
        raise ConfigError(f"{what}: {value!r} contains a double quote, which an #SBATCH line cannot hold; rename it")
    return f'"{value}"' if any(c.isspace() for c in value) else value


def _extra_option(option: str) -> str:
    """An --sbatch option, written as one #SBATCH line."""
    _plain(option, "--sbatch")
    if not option.startswith("-"):
        raise ConfigError(f"--sbatch: {option!r} is not an sbatch option; write it as --sbatch=--partition=gpu")
    return option


def sbatch_script(exp: Experiment, toml_path: str | Path, runs_dir: str | Path, gpus_per_node: int, *,
                  python: str | None = None, workdir: str | Path | None = None,
                  extra_sbatch: list[str] | None = None) -> str:
    """A batch script that runs the whole pipeline on `[launch].nodes` nodes.

    The orchestrator runs on the first node of the allocation; every training stage starts
    `accelerate launch` on each node through srun, with node 0 as the rendezvous
    (MASTER_ADDR from `scontrol show hostnames`) and the machine rank from SLURM_NODEID.
    Submitting the script again resumes the run: finished stages are skipped.
    """
    python = _plain(python or sys.executable, "the Python interpreter's path")
    workdir = Path(_plain(str(Path(workdir or os.getcwd()).resolve()), "the working directory"))
    _plain(str(toml_path), "the experiment file's path")
    run_dir = Path(_plain(str(runs_dir), "runs_dir")) / _plain(exp.name, "name")
    nodes = exp.launch.nodes
    port = exp.launch.main_process_port
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        f"# slimlab: experiment '{exp.name}' on {nodes} node(s) x {gpus_per_node} GPU(s).",
        "# Written by `slimlab-engine run --slurm`; submit with `sbatch` (resubmitting resumes the run).",
        f"#SBATCH --job-name={_directive(f'slimlab-{exp.name}', 'name')}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={gpus_per_node}",
        "#SBATCH --exclusive",
        f"#SBATCH --output={_directive(f'{run_dir}/slurm-%j.log', 'runs_dir')}",
    ]
    lines += [f"#SBATCH {_extra_option(x)}" for x in (extra_sbatch or [])]
    lines += [
        "",
        "set -euo pipefail",
        f"cd {q(str(workdir))}",
        "",
        "# Rendezvous: the first node of the allocation hosts the main process of every stage.",
        'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f"export MASTER_PORT={port}",
        "export NCCL_NVLS_ENABLE=0",
        "export PYTHONUNBUFFERED=1",
        f"export {LAUNCHER_ENV}=srun",
        "",
        "# The orchestrator (this node) runs the stages in order and skips those already done. Each",
        "# training stage is started on every node as:",
        f"#   srun --nodes={nodes} --ntasks-per-node=1 bash -c 'accelerate launch --num_machines {nodes} \\",
        "#     --machine_rank $SLURM_NODEID --main_process_ip $MASTER_ADDR --main_process_port $MASTER_PORT \\",
        f"#     --num_processes {nodes * gpus_per_node} --multi_gpu ... -m engine <kind> experiment.toml --stage <stage>'",
        f"exec {q(python)} -m engine run {q(str(toml_path))} --runs-dir {q(str(runs_dir))} \\",
        '  --set launch.main_process_ip="$MASTER_ADDR" --set launch.main_process_port="$MASTER_PORT" \\',
        f"  --set launch.nodes={nodes}",
    ]
    return "\n".join(lines) + "\n"
