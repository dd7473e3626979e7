"""`slimlab-engine run FILE`: validate, write `<run>/experiment.toml`, decide each stage's action,
then orchestrate in this process, in the background (`--detach`), or print the plan (`--dry-run`).

A stage that failed or was cancelled resumes from its own checkpoints; a stage whose
configuration or inputs changed starts afresh. No torch import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import Experiment, dumps_toml, load_experiment
from engine.contract import (
    RunLayout,
    now_iso,
    read_status,
    write_atomic,
)
from engine.contract.files import open_append
from engine.contract.status import status_lock
from engine.errors import ConfigError
from engine.orchestration.check import describe_plan
from engine.orchestration.discard_guard import check_no_silent_discard
from engine.orchestration.launch import (
    build_stage_command,
    detect_gpus,
    gpu_pool,
    stage_gpus,
)
from engine.orchestration.orchestrator import Orchestrator, is_worker_node, parallel_chunks
from engine.orchestration.pipeline_status import PipelineStatus
from engine.orchestration.run_dir_safety import check_links, check_writable
from engine.orchestration.run_lock import RunLock
from engine.orchestration.stage_actions import RunBusy, StageAction, stage_actions
from engine.orchestration.stage_runs import where
from engine.resources.fit import resource_lines, this_machine
from engine.shapes.targets import check_speed_lengths
from engine.stages import kind_of

DETACHED_ENV = "SLIMLAB_DETACHED"


@dataclass
class RunOptions:
    file: str
    overrides: list[str] = field(default_factory=list)
    only: list[str] = field(default_factory=list)
    from_stage: str | None = None
    gpus: list[int] | None = None
    runs_dir: str | None = None
    detach: bool = False
    dry_run: bool = False
    force: bool = False  # discard an interrupted stage's checkpoints when this run cannot resume from them


def load_for_run(opts: RunOptions) -> Experiment:
    exp = load_experiment(opts.file, opts.overrides)
    if opts.runs_dir:
        exp.runs_dir = opts.runs_dir
    else:
        # `run runs/demo/experiment.toml` resumes that run where it is, whatever the working directory
        f = Path(opts.file).resolve()
        if f.name == "experiment.toml" and f.parent.name == exp.name and (f.parent / "status.json").exists():
            exp.runs_dir = str(f.parent.parent)
    if opts.only and opts.from_stage:
        raise ConfigError(f"{exp.source}: --only and --from together; use one of them")
    for stage in exp.launch.stage_gpus:
        if stage not in exp.stages():
            raise ConfigError(f"{exp.source}: launch.stage_gpus: no stage '{stage}'; stages: {', '.join(exp.stages())}")
    check_runs_dir(exp)
    describe_plan(exp, resources=False)  # files, vocabulary, prune targets (no weights loaded), as `check` does
    return exp


def check_runs_dir(exp: Experiment) -> None:
    """The run directory can be made: no file in the way of runs_dir or of the run itself, a folder we may
    write in, and no entry of the run that is a link leading out of it."""
    for p in (exp.run_dir, *exp.run_dir.parents):
        if p.exists():
            if not p.is_dir():
                what = "the run directory" if p == exp.run_dir else "runs_dir (or a folder above it)"
                raise ConfigError(f"{exp.source}: {what} {p} is a file, not a folder; "
                                  "give --runs-dir (or runs_dir) a folder")
            check_writable(p, exp.source, probe=p != exp.run_dir)
            break
    check_links(exp.run_dir, exp.source)


def check_not_busy(layout: RunLayout) -> None:
    st = read_status(layout.status_file)
    if st and st.get("state") == "running" and st.get("pid") != os.getpid():
        raise RunBusy(f"{layout.root}: already running (orchestrator pid {st.get('pid')} on {st.get('host')}); "
                      f"follow it with `slimlab-engine status {layout.root}` "
                      f"or stop it with `slimlab-engine cancel {layout.root}`")


def write_experiment(exp: Experiment, layout: RunLayout) -> Experiment:
    """Write the resolved config and read it back: stages load this file, so hashes agree.

    A node's machine_rank is its command line's, never the file's: the file says 0, so that the nodes of a
    run on one disk (one host, or a shared file system) all write the same, and none reads back another's
    rank between its write and its read (node 1 did, became a second node 0, and its rendezvous failed)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    header = f"# resolved from {exp.source} at {now_iso()}; the stages of this run read this file\n"
    shared = exp.model_copy(update={"launch": exp.launch.model_copy(update={"machine_rank": 0})})
    write_atomic(layout.experiment_file, header + dumps_toml(shared.to_toml_dict()))
    again = load_experiment(layout.experiment_file)
    again.runs_dir = exp.runs_dir
    again.launch.machine_rank = exp.launch.machine_rank
    if any(again.stage_hash(s) != exp.stage_hash(s) for s in exp.stages()):  # pragma: no cover - a writer bug
        raise RuntimeError("experiment.toml does not round-trip; please report this")
    return again


def run_pipeline(opts: RunOptions, argv: list[str] | None = None) -> int:
    exp = load_for_run(opts)
    layout = RunLayout(exp.run_dir)
    worker = is_worker_node(exp)
    if not worker:
        check_not_busy(layout)
    plans = stage_actions(exp, layout, opts.only, opts.from_stage, worker=worker)
    check_no_silent_discard(exp, layout, plans, opts.force or worker)
    available = detect_gpus()
    pool = gpu_pool(exp, opts.gpus, available)
    for p in plans:
        if p.runs:
            stage_gpus(exp, p.stage, pool, available)  # validates stage_gpus before anything starts
    # memory and disk of the stages that will run, on the GPUs they get: refused before anything is written
    machine = this_machine(len(pool))
    check_speed_lengths(exp, "cuda" if machine.cuda else "cpu")  # a search's speed budget at this device's lengths
    fit = resource_lines(exp, machine, [p.stage for p in plans if p.runs])
    if opts.dry_run:
        print("\n".join(fit))
        return _print_dry_run(exp, layout, plans, pool, available)
    # every check passed: from here on this process (or the one it detaches) owns the run directory
    lock = None if worker else RunLock(layout.root).acquire()
    try:
        exp = write_experiment(exp, layout)
        if opts.detach:
            return _detach(exp, layout, opts, plans, pool, lock)
        detached = os.environ.get(DETACHED_ENV) == "1"
        print(f"run {exp.name}: {layout.root}  ({where(pool)})", flush=True)
        for p in plans:
            print(f"  {p.stage:<24} {p.action:<8} {p.reason}", flush=True)
        orch = Orchestrator(exp, layout, plans, pool, available, tail=not detached, argv=argv)
        return orch.run()
    finally:
        if lock is not None:
            lock.release()


def _print_dry_run(exp: Experiment, layout: RunLayout, plans: list[StageAction], pool: list[int],
                   available: list[int]) -> int:
    print(f"run {exp.name}: {layout.root}  ({where(pool)}); dry run")
    toml = layout.experiment_file.resolve()
    chunks = parallel_chunks(exp, [p.stage for p in plans if p.runs], pool)
    n_distill = 0
    for p in plans:
        print(f"  {p.stage:<24} {p.action:<8} {p.reason}")
        if p.runs:
            gpus = stage_gpus(exp, p.stage, pool, available)
            if chunks and kind_of(p.stage).parallel and p.stage not in exp.launch.stage_gpus:
                gpus = chunks[n_distill % len(chunks)]  # side by side (`parallel = true`)
                n_distill += 1
            # the port the run would use: [launch].main_process_port across nodes, a free one on one node
            cmd = build_stage_command(exp, p.stage, toml, layout.root.resolve().parent, gpus)
            print(f"      $ {cmd.shell()}")
    return 0


def _child_argv(opts: RunOptions, runs_dir: Path) -> list[str]:
    argv = [sys.executable, "-m", "engine", "run", str(Path(opts.file).resolve()), "--runs-dir", str(runs_dir)]
    for o in opts.overrides:
        argv += ["--set", o]
    for s in opts.only:
        argv += ["--only", s]
    if opts.from_stage:
        argv += ["--from", opts.from_stage]
    if opts.force:
        argv.append("--force")
    if opts.gpus is not None:
        argv += ["--gpus", ",".join(map(str, opts.gpus)) or "none"]
    return argv


def _detach(exp: Experiment, layout: RunLayout, opts: RunOptions, plans: list[StageAction], pool: list[int],
            lock: RunLock | None) -> int:
    """Start the orchestrator in its own session (it outlives this shell, the TUI and SSH); it
    inherits the run lock, so no other `run` slips in between this process and it."""
    from engine.orchestration.launch import launch_env

    argv = _child_argv(opts, layout.root.resolve().parent)
    env = {**os.environ, **launch_env(), DETACHED_ENV: "1", **(lock.hand_over() if lock else {})}
    # Say at once who runs it. The orchestrator rewrites the same file as soon as it starts: holding the status
    # lock from before it exists until this write is done puts its writes after this one, never under it.
    with status_lock(layout.status_file):
        with open_append(layout.root / "orchestrator.log") as log:
            log.write(f"===== {now_iso()} $ {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True, close_fds=True,
                                    pass_fds=(lock.fd,) if lock and lock.fd is not None else ())
        if lock:
            lock.record(proc.pid)
        if not is_worker_node(exp):  # node 0 owns status.json
            status = PipelineStatus(layout, exp, plans, pool, argv)
            status.doc.update(pid=proc.pid, pgid=proc.pid)
            status.write(locked=True)
    print(f"{layout.root}")
    print(f"started in the background: pid {proc.pid}; log {layout.root / 'orchestrator.log'}")
    print(f"follow: slimlab-engine status {layout.root}    stop: slimlab-engine cancel {layout.root}")
    return 0
