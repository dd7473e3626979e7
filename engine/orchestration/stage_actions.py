"""What `run` does with each stage, and why: skip (up to date), resume, run afresh, or leave out.

A stage is up to date when it succeeded with an unchanged `config_hash` and none of its inputs
reran or finished after it started. `clear_stage` removes what a rerun replaces. No torch import.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.config import Experiment
from engine.contract import (
    RunLayout,
    parse_iso,
    read_status,
)
from engine.contract.outputs import missing_output
from engine.errors import ConfigError
from engine.stages import kind_of, resolve_stage, stage_deps


class RunBusy(ConfigError):
    """The run is already going on (another orchestrator, or a stage left running)."""





@dataclass
class StageAction:
    stage: str
    action: str  # "skip" (up to date) | "resume" | "run" (from scratch) | "excluded" (--only)
    reason: str
    deps: list[str] = field(default_factory=list)
    keep_state: bool = False  # "run": leave checkpoints and metrics for the stage to judge

    @property
    def runs(self) -> bool:
        return self.action in ("run", "resume")


def _ended_after(dep_status: dict[str, Any] | None, status: dict[str, Any] | None) -> bool:
    """Did the dependency finish after this stage started (its output is newer than what the stage used)?"""
    if not status:
        return False
    started = parse_iso(status.get("started_at"))
    ended = parse_iso((dep_status or {}).get("ended_at"))
    return bool(started and ended and ended > started)


def stage_actions(exp: Experiment, layout: RunLayout, only: Iterable[str] = (), from_stage: str | None = None,
                worker: bool = False) -> list[StageAction]:
    """What `run` will do with each stage, and why. `worker`: a node > 0 of a multi-node run, where
    node 0 may already be running a stage (it then joins it rather than refusing)."""
    stages = exp.stages()
    deps = stage_deps(stages)
    only = {resolve_stage(stages, s, source=str(exp.source), flag="--only") for s in only}
    forced: set[str] = set(only)
    if from_stage:
        start = resolve_stage(stages, from_stage, source=str(exp.source), flag="--from")
        forced |= set(stages[stages.index(start):])
    docs = {s: read_status(layout.stage_status_file(s)) for s in stages}
    plans: dict[str, StageAction] = {}
    for s in stages:
        st = docs[s]
        state = (st or {}).get("state", "pending")
        if state == "running" and worker:
            plans[s] = StageAction(s, "run", "running on node 0", deps[s])
            continue
        if state == "running":
            raise RunBusy(f"{layout.root}: stage {s} is still running (pid {st.get('pid')} on {st.get('host')}); "
                          f"wait for it or stop it with `slimlab-engine cancel {layout.root}`")
        same = bool(st) and st.get("config_hash") == exp.stage_hash(s)
        rerun_up = [d for d in deps[s] if plans[d].runs]
        newer_up = [d for d in deps[s] if _ended_after(docs[d], st)]
        has_output = missing_output(layout, s) is None  # its model's weights too, not only config.json
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
        plans[s] = StageAction(s, action, reason, deps[s], keep_state=keep)
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
    d, kind = layout.stage_dir(stage), kind_of(stage)
    if d.is_symlink():  # never delete through a link (engine/orchestration/run_dir_safety.py refuses them first)
        raise ConfigError(f"{d}: is a symbolic link; a stage folder must be a real folder inside the run: "
                          "remove the link")
    if "*" in kind.kept_on_rerun or not d.is_dir():
        return
    training = kind.training
    for child in d.iterdir():
        if child.name.startswith("stdout.") or child.name in kind.kept_on_rerun:
            continue  # the logs; a kind's own cache (eval: results.json, it re-evaluates only what changed)
        if keep_state and training and child.name != "model":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
