"""The stage processes of a run: start one for a stage or for a group of N sharing it (distill stages over
one teacher: engine/orchestration/teacher_groups.py; a group of one is a stage), then settle each
stage's end in its status.json. The orchestrator (engine/orchestration/orchestrator.py) decides what
starts when. No torch import.

A stage's status.json is written here twice, never while the stage process could write it
(engine/contract/status.py lists the order): a placeholder before the process starts, and the end the
process could not write after it has exited.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import Experiment
from engine.contract import RunLayout, now_iso, read_json, stage_status_doc, write_json_or_warn
from engine.contract.files import open_append
from engine.contract.status import update_status
from engine.contract.tail import LogTail
from engine.orchestration.launch import StageCommand
from engine.orchestration.pipeline_status import PipelineStatus
from engine.orchestration.stage_actions import StageAction, clear_stage
from engine.stages import kind_of, stage_student


def where(gpus: list[int]) -> str:
    return f"GPUs {','.join(map(str, gpus))}" if gpus else "CPU"


@dataclass
class StageRun:
    """One stage process and the stages it runs (one, or a group sharing the teacher)."""

    stages: tuple[str, ...]
    proc: subprocess.Popen
    cmd: StageCommand
    started: float
    log_path: Path  # the first stage's stdout.log: the process's own output
    log: LogTail  # follows that output from where this process started writing

    @property
    def first(self) -> str:
        return self.stages[0]


class StageRunner:
    """Starts stage processes and settles their stages' ends; `status` None on a worker node (which
    writes no contract files)."""

    def __init__(self, exp: Experiment, layout: RunLayout, status: PipelineStatus | None, worker: bool):
        self.exp, self.layout, self.status, self.worker = exp, layout, status, worker

    @property
    def warned(self) -> set[str]:
        return self.status.warned if self.status else set()

    def log_path(self, stage: str) -> Path:
        if self.worker:
            return self.layout.stage_dir(stage) / f"stdout.node{self.exp.launch.machine_rank}.log"
        return self.layout.log_file(stage)

    def start(self, stages: list[str], plans: dict[str, StageAction], cmd: StageCommand) -> StageRun:
        """Start one process for `stages` with `cmd` (its argv names the first stage; the others are added).
        OSError when it cannot start: the stages' status.json then say failed."""
        first = stages[0]
        for stage in stages:
            if plans[stage].action == "run":
                clear_stage(self.layout, stage, plans[stage].keep_state)
        cmd.argv += [x for s in stages[1:] for x in ("--stage", s)]
        place = where(cmd.gpus)
        offsets: dict[str, int] = {}
        for stage in stages:
            header = self._header(plans[stage], stage, stages, place, cmd)
            self.layout.stage_dir(stage).mkdir(parents=True, exist_ok=True)
            with open_append(self.log_path(stage)) as log:
                log.write(header.encode())
                offsets[stage] = log.tell()
            if self.status:
                # Before the process exists, so that its own first write comes after this one: until then
                # this says the stage runs (the orchestrator's pid: alive while it waits for the stage).
                write_json_or_warn(self.layout.stage_status_file(stage), stage_status_doc(
                    stage, self.exp.stage_hash(stage), state="running", gpus=cmd.gpus, started_at=now_iso()),
                    self.warned)
        try:
            with open_append(self.log_path(first)) as log:
                # Its own session: the terminal's Ctrl-C and hangup reach the orchestrator alone, which passes a
                # stop request to the ranks. accelerate's launcher, given Ctrl-C itself, kills its child 5 s
                # later, mid-checkpoint.
                proc = subprocess.Popen(cmd.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env={**os.environ, **cmd.env}, start_new_session=True)
        except OSError as e:
            for stage in stages:
                self._end(stage, "failed", {"type": "StageExit", "message": f"cannot start the stage process: {e}"})
            raise
        for stage in stages:
            if self.status:
                self.status.set_stage(stage, state="running", attempts=self.status.attempt(stage), pid=proc.pid,
                                      gpus=cmd.gpus, launched_at=now_iso())
        log_path = self.log_path(first)
        return StageRun(tuple(stages), proc, cmd, time.time(), log_path,
                        LogTail(log_path, max_read=None, offset=offsets[first]))

    def _header(self, plan: StageAction, stage: str, stages: list[str], place: str, cmd: StageCommand) -> str:
        """The header a stage's stdout.log gets for this attempt."""
        attempt = self.status.attempt(stage) if self.status else 1
        shared = f", sharing the teacher with {', '.join(s for s in stages if s != stage)}" if stages[1:] else ""
        return (f"===== {now_iso()} attempt {attempt}: {plan.action} {stage} ({plan.reason}) "
                f"on {socket.gethostname()}, {place}{shared} =====\n$ {cmd.shell()}\n")

    # -- a stage's end ------------------------------------------------------------------------------
    def settle(self, stage: str, rc: int, cancelled: str | None) -> tuple[str, str]:
        """Reconcile the process's exit code with what the stage wrote, once the process has exited;
        write status.json when the stage could not. Returns (state, message)."""
        st = read_json(self.layout.stage_status_file(stage)) or {}
        state = st.get("state")
        err = (st.get("error") or {}).get("message") if isinstance(st.get("error"), dict) else None
        if state == "succeeded":  # its own word, written once its output was complete (a group's process
            return "succeeded", ""  # may exit non-zero for another of its stages)
        if cancelled or rc == 130 or (state == "cancelled" and rc in (0, 130)):
            new, msg = "cancelled", f"cancelled by {cancelled or 'a signal'}"
        elif rc < 0:
            new, msg = "failed", f"killed by {signal.Signals(-rc).name}"
        elif state == "failed" and err:
            new, msg = "failed", err
        else:
            new, msg = "failed", f"the stage process exited with code {rc}"
        if state != new or (new == "failed" and not err):
            self._end(stage, new, {"type": "Cancelled" if new == "cancelled" else "StageExit", "message": msg})
        return new, f"{msg} (log: {self.layout.log_file(stage)})"

    def _end(self, stage: str, state: str, error: dict[str, Any], ended: bool = True) -> None:
        """Write the stage's end into its status.json (the orchestrator's, once no stage process writes it);
        `ended`: it ends now (a divergence found afterwards keeps the stage's own end time)."""
        if self.status is None:
            return

        def change(st: dict[str, Any]) -> dict[str, Any]:
            st.update(state=state, updated_at=now_iso(), error=error)
            if ended or not st.get("ended_at"):
                st["ended_at"] = now_iso()
            st.setdefault("stage", stage)
            st.setdefault("config_hash", self.exp.stage_hash(stage))
            return st

        path = self.layout.stage_status_file(stage)
        if update_status(path, change, self.warned) is None:  # no document at all: a fresh one
            write_json_or_warn(path, change({}), self.warned)

    def fails_on_divergence(self, stage: str) -> bool:
        """The stage's trainer settings ([finetune], or the student's [distill]) ask to fail on divergence."""
        kind = kind_of(stage)
        if not kind.training or kind.section is None:
            return False
        cfg = (kind.student_settings(self.exp, stage_student(stage)) if kind.student_settings
               else getattr(self.exp, kind.section))
        return bool(getattr(cfg, "fail_on_divergence", False))

    def mark_diverged(self, stage: str, warning: str) -> None:
        """Its status.json says failed (a rerun with a lower lr redoes it; the same settings would again)."""
        self._end(stage, "failed", {"type": "Diverged", "message": warning}, ended=False)
