"""The orchestrator: experiment -> stages, caching, one process per stage, resume (stopping: engine.cancel).

`slimlab-engine run FILE` writes `<run>/experiment.toml` and `<run>/status.json`, decides which
stages are up to date (succeeded with an unchanged `config_hash` and no input produced after
them) and runs the others, each as its own process (`engine.launch`), output appended to
`<stage>/stdout.log`. A stage that failed or was cancelled resumes from its own checkpoints; a
stage whose configuration or inputs changed starts afresh. No torch import here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import ConfigError, Experiment, dumps_toml, load_experiment, stage_kind
from engine.launch import (
    StageCommand,
    build_stage_command,
    detect_gpus,
    gpu_pool,
    multi_node_stage,
    stage_gpus,
)
from engine.plan import describe_plan
from engine.runs import (
    RunLayout,
    now_iso,
    parse_iso,
    read_json,
    read_status,
    stage_status_doc,
    write_atomic,
    write_json,
)

POLL_S = 0.2
HEARTBEAT_S = 5.0
DETACHED_ENV = "SLIMLAB_DETACHED"

# The file whose presence proves a stage finished its work (relative to the stage directory).
STAGE_OUTPUT = {"prepare": "meta.json", "finetune": "model/config.json", "prune": "model/config.json",
                "distill": "model/config.json", "eval": "results.json"}


class RunBusy(ConfigError):
    """The run is already going on (another orchestrator, or a stage left running)."""


def is_worker_node(exp: Experiment) -> bool:
    """A node > 0 of a multi-node run (without Slurm): it joins node 0's stages, writes no contract files."""
    return exp.launch.nodes > 1 and exp.launch.machine_rank > 0


def _where(gpus: list[int]) -> str:
    return f"GPUs {','.join(map(str, gpus))}" if gpus else "CPU"


# ---- the stage graph and caching ---------------------------------------------------------


def stage_deps(exp: Experiment) -> dict[str, list[str]]:
    """The stages each stage reads from."""
    stages = exp.stages()
    base = ["prepare"] + (["finetune"] if "finetune" in stages else [])
    deps: dict[str, list[str]] = {"prepare": []}
    if "finetune" in stages:
        deps["finetune"] = ["prepare"]
    for p in exp.prune:
        deps[f"prune-{p.name}"] = list(base)
        if f"distill-{p.name}" in stages:
            deps[f"distill-{p.name}"] = [*base, f"prune-{p.name}"]
    if "eval" in stages:
        deps["eval"] = [s for s in stages if s != "eval"]
    return deps


@dataclass
class StagePlan:
    stage: str
    action: str  # "skip" (up to date) | "resume" | "run" (from scratch) | "excluded" (--only)
    reason: str
    deps: list[str] = field(default_factory=list)
    keep_state: bool = False  # "run": leave checkpoints and metrics for the stage to judge

    @property
    def runs(self) -> bool:
        return self.action in ("run", "resume")


def resolve_stage_name(exp: Experiment, name: str, flag: str) -> str:
    """`--only width` / `--only prune-width` / `--only finetune` -> a stage of this experiment."""
    stages = exp.stages()
    if name in stages:
        return name
    matches = [s for s in stages if s.split("-", 1)[-1] == name or stage_kind(s) == name]
    if len(matches) == 1:
        return matches[0]
    hint = f"'{name}' matches {', '.join(matches)}" if matches else f"no stage '{name}'"
    raise ConfigError(f"{exp.source}: {flag}: {hint}; stages: {', '.join(stages)}")


def _ended_after(dep_status: dict[str, Any] | None, status: dict[str, Any] | None) -> bool:
    """Did the dependency finish after this stage started (its output is newer than what the stage used)?"""
    if not status:
        return False
    started = parse_iso(status.get("started_at"))
    ended = parse_iso((dep_status or {}).get("ended_at"))
    return bool(started and ended and ended > started)


def plan_stages(exp: Experiment, layout: RunLayout, only: Iterable[str] = (), from_stage: str | None = None,
                worker: bool = False) -> list[StagePlan]:
    """What `run` will do with each stage, and why. `worker`: a node > 0 of a multi-node run, where
    node 0 may already be running a stage (it then joins it rather than refusing)."""
    stages = exp.stages()
    deps = stage_deps(exp)
    only = {resolve_stage_name(exp, s, "--only") for s in only}
    forced: set[str] = set(only)
    if from_stage:
        start = resolve_stage_name(exp, from_stage, "--from")
        forced |= set(stages[stages.index(start):])
    docs = {s: read_status(layout.stage_status_file(s)) for s in stages}
    plans: dict[str, StagePlan] = {}
    for s in stages:
        st = docs[s]
        state = (st or {}).get("state", "pending")
        if state == "running" and worker:
            plans[s] = StagePlan(s, "run", "running on node 0", deps[s])
            continue
        if state == "running":
            raise RunBusy(f"{layout.root}: stage {s} is still running (pid {st.get('pid')} on {st.get('host')}); "
                          f"wait for it or stop it with `slimlab-engine cancel {layout.root}`")
        same = bool(st) and st.get("config_hash") == exp.stage_hash(s)
        rerun_up = [d for d in deps[s] if plans[d].runs]
        newer_up = [d for d in deps[s] if _ended_after(docs[d], st)]
        has_output = (layout.stage_dir(s) / STAGE_OUTPUT[stage_kind(s)]).exists()
        fresh = same and not rerun_up and not newer_up  # nothing it used has changed
        keep = False
        if only and s not in only:
            action, reason = "excluded", f"not selected by --only ({state})"
        elif state in ("failed", "cancelled") and fresh:
            action, reason = "resume", f"resume after {state}"
        elif state == "succeeded" and fresh and has_output and s not in forced:
            action, reason = "skip", "up to date"
        else:
            action = "run"
            if not st or state == "pending":
                reason = "not run yet"
            elif s in forced and state == "succeeded" and fresh:
                reason = "forced by --only" if s in only else "forced by --from"
            elif rerun_up:
                reason = f"input {rerun_up[0]} reruns"
            elif newer_up:
                reason = f"input {newer_up[0]} changed since"
            else:
                # the training loop checks its checkpoints' settings itself and resumes when only
                # resumable keys changed (more steps, another lr), so those stay
                keep = True
                reason = "configuration changed" if not same else "output missing"
        plans[s] = StagePlan(s, action, reason, deps[s], keep_state=keep)
    # --only: the inputs of a selected stage must already be there
    for s in only:
        for d in deps[s]:
            if plans[d].action == "excluded":
                st = docs[d]
                if not st or st.get("state") != "succeeded":
                    raise ConfigError(f"{exp.source}: --only {s} needs {d} to have succeeded first; "
                                      f"run it too (--only {d} --only {s}) or drop --only")
    return [plans[s] for s in stages]


def clear_stage(layout: RunLayout, stage: str, keep_state: bool = False) -> None:
    """Remove what an earlier run of a stage left before it runs again; the logs stay.

    `keep_state`: a training stage keeps its checkpoints and metrics (it resumes from them when
    only resumable keys changed, and discards them itself otherwise); only the old model goes.
    `prepare` is left alone: it compares its inputs with meta.json and reuses what still fits.
    """
    d = layout.stage_dir(stage)
    if stage == "prepare" or not d.is_dir():
        return
    training = stage_kind(stage) in ("finetune", "distill")
    for child in d.iterdir():
        if child.name.startswith("stdout."):
            continue
        if keep_state and training and child.name != "model":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


# ---- the pipeline status.json --------------------------------------------------------------


class PipelineStatus:
    """`<run>/status.json` of the orchestrator (atomic writes; `updated_at` is its heartbeat)."""

    def __init__(self, layout: RunLayout, exp: Experiment, plans: list[StagePlan], gpus: list[int],
                 argv: list[str] | None = None):
        self.path = layout.status_file
        old = read_json(self.path) or {}
        old_stages = old.get("stages") if isinstance(old.get("stages"), dict) else {}
        self.doc: dict[str, Any] = {
            "name": exp.name,
            "file": exp.source,
            "stage": None,
            "running": [],
            "state": "running",
            "pid": os.getpid(),
            "pgid": os.getpgid(0),
            "host": socket.gethostname(),
            "gpus": gpus,
            "started_at": now_iso(),
            "updated_at": now_iso(),
            "ended_at": None,
            "error": None,
            "argv": argv or [],
            "stages": {p.stage: {"action": p.action, "reason": p.reason, "state": _stage_state(p),
                                 "attempts": int((old_stages.get(p.stage) or {}).get("attempts", 0)),
                                 "pid": None}
                       for p in plans},
        }
        self._last = 0.0

    def write(self) -> None:
        self.doc["updated_at"] = now_iso()
        write_json(self.path, self.doc)
        self._last = time.monotonic()

    def beat(self) -> None:
        if time.monotonic() - self._last >= HEARTBEAT_S:
            self.write()

    def set_stage(self, stage: str, **fields: Any) -> None:
        self.doc["stages"][stage].update(fields)
        running = [s for s, v in self.doc["stages"].items() if v["state"] == "running"]
        self.doc["running"] = running
        if running:
            self.doc["stage"] = running[0]
        self.write()

    def finish(self, state: str, error: dict[str, Any] | None = None) -> None:
        self.doc.update(state=state, ended_at=now_iso(), error=error, running=[])
        self.write()


def _stage_state(p: StagePlan) -> str:
    return {"skip": "succeeded", "excluded": "excluded"}.get(p.action, "pending")


# ---- running the stages ---------------------------------------------------------------------


def parallel_chunks(exp: Experiment, to_run: list[str], pool: list[int]) -> list[list[int]]:
    """Disjoint GPU sets for distill stages that run at once ([] = run them one by one).

    With [launch].parallel, one node and at least two GPUs, the pool is cut into equal parts,
    one per student (at most one per GPU); students beyond that wait for a free part."""
    distills = [s for s in to_run if stage_kind(s) == "distill"]
    if not (exp.launch.parallel and exp.launch.nodes == 1 and len(distills) > 1 and len(pool) > 1):
        return []
    n = min(len(distills), len(pool))
    per = len(pool) // n
    return [pool[i * per:(i + 1) * per] for i in range(n)]


@dataclass
class Running:
    stage: str
    proc: subprocess.Popen
    cmd: StageCommand
    started: float
    log_path: Path
    offset: int
    partial: bytes = b""


class Orchestrator:
    """Runs the planned stages; sequential, or distill stages side by side on disjoint GPU sets."""

    def __init__(self, exp: Experiment, layout: RunLayout, plans: list[StagePlan], pool: list[int],
                 available: list[int], *, tail: bool = True, argv: list[str] | None = None,
                 out=None):
        self.exp, self.layout, self.plans = exp, layout, {p.stage: p for p in plans}
        self.order = [p.stage for p in plans]
        self.pool, self.available = pool, available
        self.tail = tail
        self.out = out or sys.stdout
        self.toml = layout.experiment_file.resolve()
        self.runs_dir = layout.root.resolve().parent
        self.worker = is_worker_node(exp)  # writes no contract files
        self.status = None if self.worker else PipelineStatus(layout, exp, plans, pool, argv)
        self.done = {p.stage for p in plans if p.action == "skip"}
        self.done |= {p.stage for p in plans if p.action == "excluded"
                      and (read_status(layout.stage_status_file(p.stage)) or {}).get("state") == "succeeded"}
        self.pending = [p.stage for p in plans if p.runs]
        self.running: dict[str, Running] = {}
        self.failed: list[tuple[str, str]] = []
        self.cancelled: str | None = None  # the signal name once a cancel is requested
        self.chunks = parallel_chunks(exp, self.pending, pool)
        self.t0 = time.time()

    # -- GPU sets -------------------------------------------------------------------------------
    def _busy_gpus(self) -> set[int]:
        return {g for r in self.running.values() for g in r.cmd.gpus}

    def _gpus_for(self, stage: str) -> list[int] | None:
        """GPUs for `stage` if it may start now, else None."""
        if not self.chunks or stage_kind(stage) != "distill":
            return None if self.running else stage_gpus(self.exp, stage, self.pool, self.available)
        if any(stage_kind(s) != "distill" for s in self.running):
            return None
        busy = self._busy_gpus()
        if stage in self.exp.launch.stage_gpus:
            gpus = stage_gpus(self.exp, stage, self.pool, self.available)
            return None if busy & set(gpus) else gpus
        for chunk in self.chunks:
            if not busy & set(chunk):
                return chunk
        return None

    # -- output -----------------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        print(msg, file=self.out, flush=True)

    def _tail(self, r: Running, final: bool = False) -> None:
        if not self.tail:
            return
        try:
            with open(r.log_path, "rb") as f:
                f.seek(r.offset)
                data = f.read()
        except OSError:
            return
        r.offset += len(data)
        data = r.partial + data
        cut = len(data) if final else data.rfind(b"\n") + 1
        r.partial = data[cut:]
        text = data[:cut].decode("utf-8", errors="replace")
        if not text:
            return
        if len(self.running) > 1:  # stages side by side: say whose line it is
            text = "".join(line if line.startswith(f"[{r.stage}]") else f"[{r.stage}] {line}"
                           for line in text.splitlines(keepends=True))
        self.out.write(text)
        self.out.flush()

    # -- launching -------------------------------------------------------------------------------
    def _launch(self, stage: str, gpus: list[int]) -> None:
        plan = self.plans[stage]
        if plan.action == "run":
            clear_stage(self.layout, stage, plan.keep_state)
        cmd = build_stage_command(self.exp, stage, self.toml, self.runs_dir, gpus)
        stage_dir = self.layout.stage_dir(stage)
        stage_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.layout.log_file(stage)
        if self.worker:
            log_path = stage_dir / f"stdout.node{self.exp.launch.machine_rank}.log"
        attempt = 1
        if self.status:
            attempt = self.status.doc["stages"][stage]["attempts"] + 1
        where = _where(gpus)
        header = (f"===== {now_iso()} attempt {attempt}: {plan.action} {stage} ({plan.reason}) "
                  f"on {socket.gethostname()}, {where} =====\n$ {cmd.shell()}\n")
        with open(log_path, "ab") as log:
            log.write(header.encode())
            offset = log.tell()
            proc = subprocess.Popen(cmd.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **cmd.env}, start_new_session=False)
        self.running[stage] = Running(stage, proc, cmd, time.time(), log_path, offset)
        self.say(f"==> {stage}: {plan.action} ({plan.reason}) on {where}, pid {proc.pid}, log {log_path}")
        if self.status:
            # Until the stage process writes its own status, this one says who runs it.
            write_json(self.layout.stage_status_file(stage), stage_status_doc(
                stage, self.exp.stage_hash(stage), state="running", pid=proc.pid, gpus=gpus, started_at=now_iso()))
            self.status.set_stage(stage, state="running", attempts=attempt, pid=proc.pid, gpus=gpus,
                                  launched_at=now_iso())

    def _finish(self, r: Running) -> None:
        rc = r.proc.returncode
        self._tail(r, final=True)
        del self.running[r.stage]
        elapsed = time.time() - r.started
        if self.worker:
            state = "succeeded" if rc == 0 else ("cancelled" if self.cancelled else "failed")
            msg = f"exit code {rc}"
        else:
            state, msg = self._settle_status(r.stage, rc)
        if state == "succeeded":
            self.done.add(r.stage)
            self.say(f"==> {r.stage}: succeeded in {_fmt_s(elapsed)}")
        elif state == "cancelled":
            self.say(f"==> {r.stage}: cancelled after {_fmt_s(elapsed)}; `slimlab-engine run` resumes it")
        else:
            self.failed.append((r.stage, msg))
            self.say(f"==> {r.stage}: FAILED after {_fmt_s(elapsed)}: {msg}")
            if not self.tail:
                self.say(_last_lines(r.log_path, 15))
        if self.status:
            self.status.set_stage(r.stage, state=state, pid=None)

    def _settle_status(self, stage: str, rc: int) -> tuple[str, str]:
        """Reconcile the exit code with what the stage wrote; write status.json when it could not."""
        path = self.layout.stage_status_file(stage)
        st = read_json(path) or {}
        state = st.get("state")
        err = (st.get("error") or {}).get("message") if isinstance(st.get("error"), dict) else None
        if rc == 0 and state == "succeeded":
            return "succeeded", ""
        if self.cancelled or rc == 130 or (state == "cancelled" and rc in (0, 130)):
            new, msg = "cancelled", f"cancelled by {self.cancelled or 'a signal'}"
        elif rc < 0:
            new, msg = "failed", f"killed by {signal.Signals(-rc).name}"
        elif state == "failed" and err:
            new, msg = "failed", err
        else:
            new, msg = "failed", f"the stage process exited with code {rc}"
        if state != new or (new == "failed" and not err):
            st.update(state=new, ended_at=now_iso(), updated_at=now_iso(),
                      error={"type": "Cancelled" if new == "cancelled" else "StageExit", "message": msg})
            st.setdefault("stage", stage)
            st.setdefault("config_hash", self.exp.stage_hash(stage))
            write_json(path, st)
        return new, f"{msg} (log: {self.layout.log_file(stage)})"

    # -- worker nodes (nodes > 1, machine_rank > 0, without Slurm) ----------------------------------
    def _worker_ready(self, stage: str) -> bool:
        """On a worker node, a stage may start once node 0 has finished its inputs."""
        for d in self.plans[stage].deps:
            if d in self.done:
                continue
            st = read_status(self.layout.stage_status_file(d)) or {}
            ended = parse_iso(st.get("ended_at"))
            if st.get("state") == "succeeded" and ended and ended.timestamp() >= self.t0 - 1:
                self.done.add(d)
            elif st.get("state") == "failed" and ended and ended.timestamp() >= self.t0 - 1:
                self.failed.append((d, "failed on node 0"))
                return False
            else:
                return False
        return True

    # -- the loop -----------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        name = signal.Signals(signum).name
        if self.cancelled is None:
            self.cancelled = name
            # Ctrl-C reaches the whole foreground process group; any other signal was aimed at us
            # alone, so pass it on once (a second signal would interrupt the checkpoint being saved).
            if signum != signal.SIGINT:
                for r in self.running.values():
                    try:
                        r.proc.send_signal(signal.SIGTERM)
                    except ProcessLookupError:
                        pass

    def run(self) -> int:
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            return self._run()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _run(self) -> int:
        if self.status:
            self.status.write()
        if self.worker:  # only the training stages span machines; node 0 runs the rest
            self.pending = [s for s in self.pending if multi_node_stage(s)]
        while self.pending or self.running:
            if not (self.failed or self.cancelled):
                self._start_ready()
            for r in list(self.running.values()):
                if r.proc.poll() is not None:
                    self._finish(r)
                else:
                    self._tail(r)
            if (self.failed or self.cancelled) and not self.running:
                break
            if self.status:
                self.status.beat()
            time.sleep(POLL_S)
        return self._conclude()

    def _start_ready(self) -> None:
        if self.pending and not self.running and not self.worker:
            first = self.pending[0]
            missing = [d for d in self.plans[first].deps if d not in self.done and d not in self.pending]
            if missing:  # cannot happen with plans from plan_stages; fail loudly rather than spin
                self.failed.append((first, f"its input {missing[0]} is not available"))
                return
        for stage in list(self.pending):
            deps_ok = all(d in self.done for d in self.plans[stage].deps)
            if self.worker:
                deps_ok = self._worker_ready(stage)
            if not deps_ok:
                if not self.chunks:
                    return  # strictly in order
                continue
            gpus = self._gpus_for(stage)
            if gpus is None:
                return
            self.pending.remove(stage)
            try:
                self._launch(stage, gpus)
            except OSError as e:
                self.failed.append((stage, f"cannot start the stage process: {e}"))
                if self.status:
                    self.status.set_stage(stage, state="failed")
                return
            if not self.chunks or stage_kind(stage) != "distill":
                return

    def _conclude(self) -> int:
        elapsed = _fmt_s(time.time() - self.t0)
        if self.cancelled:
            if self.status:
                self.status.finish("cancelled", {"type": "Cancelled", "message": f"cancelled by {self.cancelled}"})
            self.say(f"cancelled after {elapsed}; run the same command again to resume")
            return 130
        if self.failed:
            stage, msg = self.failed[0]
            if self.status:
                self.status.finish("failed", {"type": "StageFailed", "stage": stage, "message": f"{stage}: {msg}"})
            print(f"error: stage {stage} failed: {msg}", file=sys.stderr, flush=True)
            return 1
        if self.status:
            self.status.doc["stage"] = self.order[-1] if self.order else None
            self.status.finish("succeeded")
        self.say(f"done in {elapsed}: {self.layout.root}  (compare: slimlab-engine compare {self.layout.root})")
        return 0


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def _last_lines(path: Path, n: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 8192))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join("    " + line for line in text.splitlines()[-n:])


# ---- `run` -----------------------------------------------------------------------------------------


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
    describe_plan(exp)  # the prune target checks (no weights loaded), as `check` does
    return exp


def check_not_busy(layout: RunLayout) -> None:
    st = read_status(layout.status_file)
    if st and st.get("state") == "running" and st.get("pid") != os.getpid():
        raise RunBusy(f"{layout.root}: already running (orchestrator pid {st.get('pid')} on {st.get('host')}); "
                      f"follow it with `slimlab-engine status {layout.root}` "
                      f"or stop it with `slimlab-engine cancel {layout.root}`")


def write_experiment(exp: Experiment, layout: RunLayout) -> Experiment:
    """Write the resolved config and read it back: stages load this file, so hashes agree."""
    layout.root.mkdir(parents=True, exist_ok=True)
    header = f"# resolved from {exp.source} at {now_iso()}; the stages of this run read this file\n"
    write_atomic(layout.experiment_file, header + dumps_toml(exp.to_toml_dict()))
    again = load_experiment(layout.experiment_file)
    again.runs_dir = exp.runs_dir
    if any(again.stage_hash(s) != exp.stage_hash(s) for s in exp.stages()):  # pragma: no cover - a writer bug
        raise RuntimeError("experiment.toml does not round-trip; please report this")
    return again


def run_pipeline(opts: RunOptions, argv: list[str] | None = None) -> int:
    exp = load_for_run(opts)
    layout = RunLayout(exp.run_dir)
    worker = is_worker_node(exp)
    if not worker:
        check_not_busy(layout)
    plans = plan_stages(exp, layout, opts.only, opts.from_stage, worker=worker)
    available = detect_gpus()
    pool = gpu_pool(exp, opts.gpus, available)
    for p in plans:
        if p.runs:
            stage_gpus(exp, p.stage, pool, available)  # validates stage_gpus before anything starts
    if opts.dry_run:
        return _print_dry_run(exp, layout, plans, pool, available)
    exp = write_experiment(exp, layout)
    if opts.detach:
        return _detach(exp, layout, opts, plans, pool)
    detached = os.environ.get(DETACHED_ENV) == "1"
    print(f"run {exp.name}: {layout.root}  ({_where(pool)})", flush=True)
    for p in plans:
        print(f"  {p.stage:<24} {p.action:<8} {p.reason}", flush=True)
    orch = Orchestrator(exp, layout, plans, pool, available, tail=not detached, argv=argv)
    return orch.run()


def _print_dry_run(exp: Experiment, layout: RunLayout, plans: list[StagePlan], pool: list[int],
                   available: list[int]) -> int:
    print(f"run {exp.name}: {layout.root}  ({_where(pool)}); dry run")
    toml = layout.experiment_file.resolve()
    chunks = parallel_chunks(exp, [p.stage for p in plans if p.runs], pool)
    n_distill = 0
    for p in plans:
        print(f"  {p.stage:<24} {p.action:<8} {p.reason}")
        if p.runs:
            gpus = stage_gpus(exp, p.stage, pool, available)
            if chunks and stage_kind(p.stage) == "distill" and p.stage not in exp.launch.stage_gpus:
                gpus = chunks[n_distill % len(chunks)]  # side by side (`parallel = true`)
                n_distill += 1
            cmd = build_stage_command(exp, p.stage, toml, layout.root.resolve().parent, gpus, port=29500)
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
    if opts.gpus is not None:
        argv += ["--gpus", ",".join(map(str, opts.gpus)) or "none"]
    return argv


def _detach(exp: Experiment, layout: RunLayout, opts: RunOptions, plans: list[StagePlan], pool: list[int]) -> int:
    """Start the orchestrator in its own session (it outlives this shell, the TUI and SSH)."""
    from engine.launch import launch_env

    argv = _child_argv(opts, layout.root.resolve().parent)
    env = {**os.environ, **launch_env(), DETACHED_ENV: "1"}
    with open(layout.root / "orchestrator.log", "ab") as log:
        log.write(f"===== {now_iso()} $ {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, close_fds=True)
    # Say at once who runs it (the orchestrator rewrites the same file as soon as it starts).
    if not is_worker_node(exp):  # node 0 owns status.json
        status = PipelineStatus(layout, exp, plans, pool, argv)
        status.doc.update(pid=proc.pid, pgid=proc.pid)
        status.write()
    print(f"{layout.root}")
    print(f"started in the background: pid {proc.pid}; log {layout.root / 'orchestrator.log'}")
    print(f"follow: slimlab-engine status {layout.root}    stop: slimlab-engine cancel {layout.root}")
    return 0


# ---- `run --slurm` -----------------------------------------------------------------------------------


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
    if gpus_per_node is None:
        if opts.gpus is not None:
            gpus_per_node = len(opts.gpus)
        elif exp.launch.gpus != "all":
            gpus_per_node = len(exp.launch.gpus)
        else:
            gpus_per_node = len(detect_gpus())
    if gpus_per_node < 1:
        raise ConfigError(f"{exp.source}: --slurm: cannot tell how many GPUs each node has (launch.gpus = \"all\" "
                          "and none on this machine); pass --gpus-per-node N")
    exp = write_experiment(exp, layout)
    from engine.launch import sbatch_script

    script = sbatch_script(exp, layout.experiment_file.resolve(), layout.root.resolve().parent, gpus_per_node,
                           extra_sbatch=extra_sbatch)
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
