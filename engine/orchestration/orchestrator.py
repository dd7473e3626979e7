"""The orchestrator: one process per stage (or per group of distill stages sharing the teacher), in order
or side by side on disjoint GPU sets; `<run>/status.json` (engine/orchestration/pipeline_status.py).

Starting a stage process and settling its stages' ends: engine/orchestration/stage_runs.py. Stopping a
run: engine.orchestration.cancel. No torch import.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from engine.config import Experiment
from engine.contract import RunLayout, duration, parse_iso, read_status
from engine.contract.divergence import stage_divergence
from engine.contract.tail import last_lines
from engine.orchestration.launch import build_stage_command, stage_gpus, stage_processes
from engine.orchestration.pipeline_status import PipelineStatus
from engine.orchestration.stage_actions import StageAction
from engine.orchestration.stage_runs import StageRun, StageRunner, where
from engine.orchestration.teacher_groups import teacher_group
from engine.stages import kind_of

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
        self.runner = StageRunner(exp, layout, self.status, self.worker)
        self.done = {p.stage for p in plans if p.action == "skip"}
        self.done |= {p.stage for p in plans if p.action == "excluded"
                      and (read_status(layout.stage_status_file(p.stage)) or {}).get("state") == "succeeded"}
        self.pending = [p.stage for p in plans if p.runs]
        self.running: list[StageRun] = []  # one per stage process (a stage, or a group sharing the teacher)
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
        return {g for r in self.running for g in r.cmd.gpus}

    def _gpus_for(self, stage: str) -> list[int] | None:
        """GPUs for `stage` if it may start now, else None."""
        if not self.chunks or not kind_of(stage).parallel:
            return None if self.running else stage_gpus(self.exp, stage, self.pool, self.available)
        if any(not kind_of(s).parallel for r in self.running for s in r.stages):
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

    def _tail(self, r: StageRun, final: bool = False) -> None:
        """Echo the process's new output (a group's is in its first stage's log)."""
        if not self.tail:
            return
        text = r.log.read_text(final)
        if not text:
            return
        if len(self.running) > 1:  # processes side by side: say whose line it is
            text = "".join(line if line.startswith(f"[{r.first}]") else f"[{r.first}] {line}"
                           for line in text.splitlines(keepends=True))
        self.out.write(text)
        self.out.flush()

    # -- launching and settling ----------------------------------------------------------------------
    def _launch(self, stages: list[str], gpus: list[int]) -> None:
        """Start one process for `stages`: one stage, or distill stages sharing the teacher."""
        cmd = build_stage_command(self.exp, stages[0], self.toml, self.runs_dir, gpus)
        r = self.runner.start(stages, self.plans, cmd)
        self.running.append(r)
        for stage in stages:
            plan = self.plans[stage]
            self.say(f"==> {stage}: {plan.action} ({plan.reason}) on {where(gpus)}, pid {r.proc.pid}, "
                     f"log {self.runner.log_path(stage)}")

    def _finish(self, r: StageRun) -> None:
        self._tail(r, final=True)
        self.running.remove(r)
        for stage in r.stages:
            self._finish_stage(stage, r)

    def _finish_stage(self, stage: str, r: StageRun) -> None:
        rc = r.proc.returncode
        elapsed = time.time() - r.started
        if self.worker:
            state = "succeeded" if rc == 0 else ("cancelled" if self.cancelled else "failed")
            msg = f"exit code {rc}"
        else:
            state, msg = self.runner.settle(stage, rc, self.cancelled)
        if state == "succeeded":
            self.done.add(stage)
            self.say(f"==> {stage}: succeeded in {duration(elapsed)}")
        elif state == "cancelled":
            self.say(f"==> {stage}: cancelled after {duration(elapsed)}; `slimlab-engine run` resumes it")
        else:
            self.failed.append((stage, msg))
            if rc == 2:  # the stage's own user error (data.seq_length longer than the tokenized data, ...)
                self.user_errors.add(stage)
            self.say(f"==> {stage}: FAILED after {duration(elapsed)}: {msg}")
            if not self.tail:
                self.say("\n".join("    " + line for line in last_lines(self.runner.log_path(stage), 15)))
        warning = stage_divergence(self.layout.metrics_file(stage)) if state == "succeeded" else None
        if warning and self.runner.fails_on_divergence(stage):
            state = "failed"
            self.failed.append((stage, f"diverged: {warning}"))
            self.say(f"==> {stage}: FAILED (fail_on_divergence): {warning}")
            self.runner.mark_diverged(stage, warning)
        elif warning:
            self.say(f"==> {stage}: WARNING: {warning}")
        if self.status:
            self.status.set_stage(stage, state=state, pid=None, warning=warning)

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
            for r in self.running:
                for pid in stage_processes(r.proc.pid):
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
        elif signum == signal.SIGINT:  # Ctrl-C twice: stop now (the user decides, not a timer)
            self.stop_now = True
            for r in self.running:
                _kill_tree(r.proc.pid)

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
            for r in list(self.running):
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
