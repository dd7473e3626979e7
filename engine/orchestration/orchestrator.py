"""The orchestrator: one process per stage, in order or distill stages side by side; `<run>/status.json`.

Stopping a run: engine.orchestration.cancel. No torch import.

Over 450 lines, kept whole for now: the scheduling loop and the signal handling share the running-stage
table; the next split, the stage-process start/poll part into its own module, waits for issue 22's one
stage lifecycle (run_stage / run_stage_group), which reshapes the same code.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import Experiment
from engine.contract import (
    HEARTBEAT_S,
    RunLayout,
    duration,
    now_iso,
    parse_iso,
    read_json,
    read_status,
    stage_status_doc,
    write_json_or_warn,
)
from engine.contract.divergence import stage_divergence
from engine.contract.files import open_append
from engine.contract.tail import LogTail, last_lines
from engine.orchestration.launch import (
    StageCommand,
    build_stage_command,
    stage_gpus,
    stage_processes,
)
from engine.orchestration.stage_actions import StageAction, clear_stage
from engine.orchestration.teacher_groups import teacher_group
from engine.stages import kind_of, stage_student

POLL_S = 0.2


def _kill_tree(pid: int) -> None:
    """SIGKILL a stage process and everything under it (its launcher's ranks)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def is_worker_node(exp: Experiment) -> bool:
    """A node > 0 of a multi-node run (without Slurm): it joins node 0's stages, writes no contract files."""
    return exp.launch.nodes > 1 and exp.launch.machine_rank > 0


def where(gpus: list[int]) -> str:
    return f"GPUs {','.join(map(str, gpus))}" if gpus else "CPU"


# ---- the pipeline status.json --------------------------------------------------------------


class PipelineStatus:
    """`<run>/status.json` of the orchestrator (atomic writes; `updated_at` is its heartbeat)."""

    def __init__(self, layout: RunLayout, exp: Experiment, plans: list[StageAction], gpus: list[int],
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
        self.warned: set[str] = set()  # files a write failed for (a full disk): said once, then going on

    def write(self) -> None:
        self.doc["updated_at"] = now_iso()
        write_json_or_warn(self.path, self.doc, self.warned)
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


def _stage_state(p: StageAction) -> str:
    return {"skip": "succeeded", "excluded": "excluded"}.get(p.action, "pending")


# ---- running the stages ---------------------------------------------------------------------


def parallel_chunks(exp: Experiment, to_run: list[str], pool: list[int]) -> list[list[int]]:
    """Disjoint GPU sets for distill stages that run at once ([] = run them one by one).

    With [launch].parallel, one node and at least two GPUs, the pool is cut into equal parts,
    one per student (at most one per GPU); students beyond that wait for a free part."""
    distills = [s for s in to_run if kind_of(s).parallel]
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
    log: LogTail  # follows the stage's output from where its process started writing
    group: tuple[str, ...] = ()  # the stages sharing this process ([distill] share_teacher), if several


class Orchestrator:
    """Runs the planned stages; sequential, or distill stages side by side on disjoint GPU sets."""

    def __init__(self, exp: Experiment, layout: RunLayout, plans: list[StageAction], pool: list[int],
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
        self.user_errors: set[str] = set()  # failed stages that exited 2: the run exits 2 as well
        self.cancelled: str | None = None  # the signal name once a cancel is requested
        self.stop_now = False  # a second Ctrl-C: the stages were killed
        self.sharing = exp.distill is not None and exp.distill.share_teacher
        self.chunks = [] if self.sharing else parallel_chunks(exp, self.pending, pool)
        self.said: set[str] = set()  # lines about teacher sharing, said once
        self.t0 = time.time()

    # -- GPU sets -------------------------------------------------------------------------------
    def _busy_gpus(self) -> set[int]:
        return {g for r in self.running.values() for g in r.cmd.gpus}

    def _gpus_for(self, stage: str) -> list[int] | None:
        """GPUs for `stage` if it may start now, else None."""
        if not self.chunks or not kind_of(stage).parallel:
            return None if self.running else stage_gpus(self.exp, stage, self.pool, self.available)
        if any(not kind_of(s).parallel for s in self.running):
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
        if not self.tail or (r.group and r.stage != r.group[0]):
            return  # a group's output is in its first stage's log
        text = r.log.read_text(final)
        if not text:
            return
        if len(self.running) > 1:  # stages side by side: say whose line it is
            text = "".join(line if line.startswith(f"[{r.stage}]") else f"[{r.stage}] {line}"
                           for line in text.splitlines(keepends=True))
        self.out.write(text)
        self.out.flush()

    # -- launching -------------------------------------------------------------------------------
    def _launch(self, stages: list[str], gpus: list[int]) -> None:
        """Start one process for `stages`: one stage, or distill stages sharing the teacher."""
        first = stages[0]
        for stage in stages:
            plan = self.plans[stage]
            if plan.action == "run":
                clear_stage(self.layout, stage, plan.keep_state)
        cmd = build_stage_command(self.exp, first, self.toml, self.runs_dir, gpus)
        cmd.argv += [x for s in stages[1:] for x in ("--stage", s)]
        place = where(gpus)
        offsets: dict[str, int] = {}
        for stage in stages:
            plan = self.plans[stage]
            self.layout.stage_dir(stage).mkdir(parents=True, exist_ok=True)
            attempt = self.status.doc["stages"][stage]["attempts"] + 1 if self.status else 1
            shared = f", sharing the teacher with {', '.join(s for s in stages if s != stage)}" if stages[1:] else ""
            header = (f"===== {now_iso()} attempt {attempt}: {plan.action} {stage} ({plan.reason}) "
                      f"on {socket.gethostname()}, {place}{shared} =====\n$ {cmd.shell()}\n")
            with open_append(self._log_path(stage)) as log:
                log.write(header.encode())
                offsets[stage] = log.tell()
        with open_append(self._log_path(first)) as log:
            # Its own session: the terminal's Ctrl-C and hangup reach this process alone, which passes a stop
            # request to the ranks (_on_signal). accelerate's launcher, given Ctrl-C itself, kills its child
            # 5 s later, mid-checkpoint.
            proc = subprocess.Popen(cmd.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **cmd.env}, start_new_session=True)
        group = tuple(stages) if stages[1:] else ()
        for stage in stages:
            plan = self.plans[stage]
            log_path = self._log_path(stage)
            self.running[stage] = Running(stage, proc, cmd, time.time(), log_path,
                                          LogTail(log_path, max_read=None, offset=offsets[stage]), group)
            self.say(f"==> {stage}: {plan.action} ({plan.reason}) on {place}, pid {proc.pid}, log {log_path}")
            if self.status:
                attempt = self.status.doc["stages"][stage]["attempts"] + 1
                # Until the stage process writes its own status, this one says who runs it.
                write_json_or_warn(self.layout.stage_status_file(stage), stage_status_doc(
                    stage, self.exp.stage_hash(stage), state="running", pid=proc.pid, gpus=gpus,
                    started_at=now_iso()), self.status.warned)
                self.status.set_stage(stage, state="running", attempts=attempt, pid=proc.pid, gpus=gpus,
                                      launched_at=now_iso())

    def _log_path(self, stage: str) -> Path:
        if self.worker:
            return self.layout.stage_dir(stage) / f"stdout.node{self.exp.launch.machine_rank}.log"
        return self.layout.log_file(stage)

    def _finish(self, r: Running) -> None:
        rc = r.proc.returncode
        if r.group and (read_json(self.layout.stage_status_file(r.stage)) or {}).get("state") == "succeeded":
            rc = 0  # its process ended later or for another stage of the group
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
            self.say(f"==> {r.stage}: succeeded in {duration(elapsed)}")
        elif state == "cancelled":
            self.say(f"==> {r.stage}: cancelled after {duration(elapsed)}; `slimlab-engine run` resumes it")
        else:
            self.failed.append((r.stage, msg))
            if rc == 2:  # the stage's own user error (data.seq_length longer than the tokenized data, ...)
                self.user_errors.add(r.stage)
            self.say(f"==> {r.stage}: FAILED after {duration(elapsed)}: {msg}")
            if not self.tail:
                self.say("\n".join("    " + line for line in last_lines(r.log_path, 15)))
        warning = stage_divergence(self.layout.metrics_file(r.stage)) if state == "succeeded" else None
        if warning and self._fails_on_divergence(r.stage):
            state = "failed"
            self.failed.append((r.stage, f"diverged: {warning}"))
            self.say(f"==> {r.stage}: FAILED (fail_on_divergence): {warning}")
            self._mark_diverged(r.stage, warning)
        elif warning:
            self.say(f"==> {r.stage}: WARNING: {warning}")
        if self.status:
            self.status.set_stage(r.stage, state=state, pid=None, warning=warning)

    def _fails_on_divergence(self, stage: str) -> bool:
        """The stage's trainer settings ([finetune], or the student's [distill]) ask to fail on divergence."""
        kind = kind_of(stage)
        if not kind.training or kind.section is None:
            return False
        cfg = (kind.student_settings(self.exp, stage_student(stage)) if kind.student_settings
               else getattr(self.exp, kind.section))
        return bool(getattr(cfg, "fail_on_divergence", False))

    def _mark_diverged(self, stage: str, warning: str) -> None:
        """Its status.json says failed (a rerun with a lower lr redoes it; the same settings would again)."""
        if self.status is None:
            return
        path = self.layout.stage_status_file(stage)
        st = read_json(path) or {}
        st.update(state="failed", updated_at=now_iso(), error={"type": "Diverged", "message": warning})
        write_json_or_warn(path, st, self.status.warned)

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
            if self.status:
                write_json_or_warn(path, st, self.status.warned)
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
        if signum == signal.SIGHUP:  # the terminal is gone: writing to it would fail (EIO); the logs keep all
            self.out = sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        if self.cancelled is None:
            self.cancelled = name
            # The stages run in their own sessions (_launch): pass the request on once (a second signal
            # would interrupt the checkpoint being saved), to the stage's ranks, past its launcher
            # (launch.stage_processes says why).
            for proc in {r.proc.pid: r.proc for r in self.running.values()}.values():  # a group: once
                for pid in stage_processes(proc.pid):
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
        elif signum == signal.SIGINT:  # Ctrl-C twice: stop now (the user decides, not a timer)
            self.stop_now = True
            for proc in {r.proc.pid: r.proc for r in self.running.values()}.values():
                _kill_tree(proc.pid)

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
            self.pending = [s for s in self.pending if kind_of(s).multi_node]
        said_cancel = False
        while self.pending or self.running:
            if self.cancelled and not said_cancel and not self.stop_now:  # said here, not in the signal handler
                said_cancel = True
                self.say(f"==> cancelling ({self.cancelled}): the running stages finish their step and save a "
                         "checkpoint; Ctrl-C again stops them now")
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
            if missing:  # cannot happen with plans from stage_actions; fail loudly rather than spin
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
            group = self._teacher_group(stage)
            for s in group:
                self.pending.remove(s)
            try:
                self._launch(group, gpus)
            except OSError as e:
                for s in group:
                    self.failed.append((s, f"cannot start the stage process: {e}"))
                    if self.status:
                        self.status.set_stage(s, state="failed")
                return
            if not self.chunks or not kind_of(stage).parallel:
                return

    def _teacher_group(self, stage: str) -> list[str]:
        """`stage` and, with [distill] share_teacher, the distill stages due with it on its GPUs."""
        if not self.sharing or self.worker:
            return [stage]
        ready = [s for s in self.pending if s != stage and all(d in self.done for d in self.plans[s].deps)]
        group, why = teacher_group(self.exp, [stage, *ready],
                                   lambda s: stage_gpus(self.exp, s, self.pool, self.available))
        for line in why:
            if line not in self.said:
                self.said.add(line)
                self.say(f"==> {line}")
        return group

    def _conclude(self) -> int:
        elapsed = duration(time.time() - self.t0)
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
            return 2 if stage in self.user_errors else 1
        if self.status:
            self.status.doc["stage"] = self.order[-1] if self.order else None
            self.status.finish("succeeded")
        self.say(f"done in {elapsed}: {self.layout.root}  (compare: slimlab-engine compare {self.layout.root})")
        return 0
