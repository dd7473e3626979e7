"""`slimlab-engine cancel RUN_DIR`: stop every process of a run, give them time to save, leave no orphan.

No torch import; psutil walks the process tree.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.config import ConfigError
from engine.contract import RunLayout, effective_state, now_iso, process_of, read_json, write_json
from engine.contract.cancelling import CANCEL_SLACK_S, cancel_grace, saving_step, saving_what
from engine.contract.status import update_status
from engine.orchestration.launch import stage_processes

DEFAULT_GRACE_S = 20.0  # the least a cancel waits for the stages to stop on their own
CANCEL_FILE = "cancel.json"  # <run>/cancel.json: the pid of a cancel that is waiting (a second one kills now)
POLL_S = 0.2


def _tree(procs) -> dict[int, Any]:
    import psutil

    out: dict[int, Any] = {}
    for p in procs:
        try:
            out[p.pid] = p
            for c in p.children(recursive=True):
                out[c.pid] = c
        except psutil.NoSuchProcess:
            continue
    return out


def _group_members(pgids: set[int]) -> dict[int, Any]:
    import psutil

    out: dict[int, Any] = {}
    if not pgids:
        return out
    for p in psutil.process_iter():
        if _pgid(p.pid) in pgids:
            out[p.pid] = p
    return out


def cancel_run(run_dir: str | Path, grace: float | None = None, out=None, now: bool = False,
               clock: Callable[[], float] = time.monotonic) -> int:
    """Stop a run: SIGTERM (the stages finish their step and save a checkpoint), then SIGKILL whatever is left.

    The orchestrator gets SIGTERM and passes it to its stage processes (accelerate passes it to
    every rank). Stage processes left without an orchestrator get it directly. A stage that reports
    "saving" (engine/contract/cancelling.py) is waited for however long its checkpoint takes; otherwise
    the wait is `grace` seconds (default DEFAULT_GRACE_S) or, when longer, what the stages' measured
    step and checkpoint times need. Then every process of the run still alive is killed: the
    orchestrator's descendants, and the process groups the run leads (torchrun gives each rank its
    own), so no orphan keeps GPU memory. `now`, or a second cancel while one waits: SIGKILL at once.
    """
    out = out or sys.stdout
    layout = RunLayout(run_dir)
    if not layout.root.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory; list runs with `slimlab-engine status`")
    raw = read_json(layout.status_file)
    if raw is None and not layout.stages_on_disk():
        raise ConfigError(f"{run_dir}: not a run directory (no status.json); list runs with `slimlab-engine status`")
    raw = raw or {}
    host = socket.gethostname()
    if raw.get("host") and raw.get("host") != host and raw.get("state") == "running":
        raise ConfigError(f"{run_dir}: the run is on host {raw.get('host')}; cancel it there")
    me = {os.getpid(), os.getppid()}
    my_pgid = os.getpgid(0)

    orch = process_of(raw.get("pid"), raw.get("started_at")) if raw.get("state") == "running" else None
    stage_docs = {s: read_json(layout.stage_status_file(s)) or {} for s in layout.stages_on_disk()}
    stage_procs = [p for s, st in stage_docs.items() if st.get("state") == "running" and st.get("host") == host
                   for p in [process_of(st.get("pid"), st.get("started_at"))] if p]
    launchers = [p for v in (raw.get("stages") or {}).values() if isinstance(v, dict) and v.get("pid")
                 for p in [process_of(v.get("pid"), v.get("launched_at"))] if p]
    roots = [p for p in [orch, *launchers, *stage_procs] if p is not None and p.pid not in me]
    if not roots:
        print(f"{run_dir}: nothing is running (state: {effective_state(raw) if raw else 'unknown'})", file=out)
        return 0

    procs = _tree(roots)
    # process groups led by a process of the run (a detached orchestrator, torchrun's ranks)
    leaders = {pid for pid, p in procs.items() if _pgid(pid) == pid}
    leaders.discard(my_pgid)
    procs.update(_group_members(leaders))
    for pid in me:
        procs.pop(pid, None)
    running = [s for s, st in stage_docs.items() if st.get("state") == "running"]

    first = _waiting_canceller(layout)
    if first is not None and not now:
        print(f"{run_dir}: a cancel (pid {first}) is already waiting for the stages to save; "
              "this second cancel stops the run now", file=out, flush=True)
        now = True
    if now:
        killed = _kill(procs, leaders, me)
        print(f"{run_dir}: SIGKILL sent to {killed} process(es) at once", file=out, flush=True)
    else:
        marker = layout.root / CANCEL_FILE
        write_json(marker, {"pid": os.getpid(), "started_at": now_iso()})
        try:
            _terminate_and_wait(run_dir, layout, orch, [*launchers, *stage_procs], procs, leaders, me,
                                DEFAULT_GRACE_S if grace is None else grace, clock, out)
        finally:
            marker.unlink(missing_ok=True)
    lost = {s: msg for s in running if (msg := lost_progress(layout, s))}
    for s, msg in lost.items():
        print(f"{run_dir}: {s}: {msg}", file=out)
    _mark_cancelled(layout, lost, out)
    print(f"{run_dir}: cancelled; `slimlab-engine run {layout.experiment_file}` resumes it", file=out)
    return 0


def _terminate_and_wait(run_dir: str | Path, layout: RunLayout, orch: Any, stage_roots: list[Any],
                        procs: dict[int, Any], leaders: set[int], me: set[int], grace: float,
                        clock: Callable[[], float], out) -> None:
    """SIGTERM, then wait while a stage saves, or up to the grace; SIGKILL what is left after it."""
    import psutil

    # SIGTERM: to the orchestrator, which passes it on to the stages' ranks; to the ranks directly when it
    # is gone, past accelerate's launcher, which kills its child 5 s after a SIGTERM (launch.stage_processes).
    # A stage started without accelerate is its own launcher: once per process, not per record.
    if orch is not None:
        targets = [orch]
    else:
        ranks = {pid for p in stage_roots for pid in stage_processes(p.pid)}
        targets = [p for pid in sorted(ranks) if (p := procs.get(pid) or _process(pid)) is not None]
    for p in targets:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    start = clock()
    wait_s = max([grace, *(cancel_grace(d, time.time()) for d in _running_docs(layout).values())])
    print(f"{run_dir}: SIGTERM sent to {', '.join(str(p.pid) for p in targets)}; waiting up to {wait_s:.0f}s "
          "for the running step and its checkpoint, longer while a checkpoint is being written "
          "(cancel again to stop now)", file=out, flush=True)
    said: set[tuple[str, int]] = set()
    saved_at: float | None = None  # when a stage last reported saving
    while True:
        procs.update({pid: p for pid, p in _tree([p for p in procs.values() if _alive(p)]).items() if pid not in me})
        if not any(_alive(p) for p in procs.values()):
            return
        docs = _running_docs(layout)
        saving = {s: n for s, d in docs.items() if (n := saving_step(d)) is not None}
        for s, n in saving.items():
            if (s, n) not in said:
                said.add((s, n))
                print(f"{run_dir}: {s}: cancelling: saving {saving_what(docs[s])} at step {n}; waiting for it",
                      file=out, flush=True)
        if saving:
            saved_at = clock()
        else:
            wait_s = max([wait_s, *(cancel_grace(d) for d in docs.values())])
            deadline = max(start + wait_s, saved_at + CANCEL_SLACK_S if saved_at is not None else 0.0)
            if clock() >= deadline:
                break
        time.sleep(POLL_S)
    killed = _kill(procs, leaders, me)
    if killed:
        print(f"{run_dir}: SIGKILL sent to {killed} process(es) still running after {clock() - start:.0f}s",
              file=out)


def _kill(procs: dict[int, Any], leaders: set[int], me: set[int]) -> int:
    """SIGKILL every live process of the run; how many."""
    import psutil

    procs.update(_group_members(leaders))
    left = [p for pid, p in procs.items() if _alive(p) and pid not in me]
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=10)
    return len(left)


def _running_docs(layout: RunLayout) -> dict[str, dict[str, Any]]:
    """status.json of each stage whose process (this host) is alive and says it is running."""
    docs = {s: read_json(layout.stage_status_file(s)) or {} for s in layout.stages_on_disk()}
    return {s: d for s, d in docs.items() if d.get("state") == "running" and effective_state(d) == "running"}


def _waiting_canceller(layout: RunLayout) -> int | None:
    """The pid of another `cancel` of this run that is still waiting, if any."""
    doc = read_json(layout.root / CANCEL_FILE) or {}
    p = process_of(doc.get("pid"), doc.get("started_at"))
    return p.pid if p is not None and p.pid != os.getpid() else None


def lost_progress(layout: RunLayout, stage: str) -> str | None:
    """For a training stage that stopped past its last checkpoint: which steps are lost, plainly."""
    from engine.contract.checkpoints import latest_checkpoint

    doc = read_json(layout.stage_status_file(stage)) or {}
    if "step_s" not in doc or doc.get("state") == "succeeded":  # not training, or done (its model written)
        return None
    reached = max([doc.get("step") if isinstance(doc.get("step"), int) else 0, _last_train_step(layout, stage)])
    found = latest_checkpoint(layout.checkpoints_dir(stage))
    saved = found[0] if found else 0
    if reached <= saved:
        return None
    where = f"resume starts again at step {saved}, from its checkpoint" if found else \
        "no checkpoint was written, so resume starts from step 0"
    return f"progress lost: stopped at step {reached} before its checkpoint was saved; {where}"


def _last_train_step(layout: RunLayout, stage: str) -> int:
    from engine.contract import read_metrics_summary

    last = read_metrics_summary(layout.metrics_file(stage)).last_train or {}
    return last["step"] if isinstance(last.get("step"), int) else 0


def _process(pid: int) -> Any:
    import psutil

    try:
        return psutil.Process(pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _alive(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _writer_alive(doc: dict[str, Any]) -> bool:
    """The process that writes `doc` (its pid, on this host) is still alive."""
    return doc.get("host") == socket.gethostname() and process_of(doc.get("pid"), doc.get("started_at")) is not None


def _mark_cancelled(layout: RunLayout, lost: dict[str, str], out=None) -> None:
    """Stages and pipeline still saying `running` (their processes are gone now) become `cancelled`;
    a stage that lost progress says so in its error (`status` and the TUI show it).

    The last writer of these files (engine/contract/status.py): nothing is written while the orchestrator,
    or the process a stage's status.json names, is still alive (one that outlived SIGKILL); it settles its
    own files."""
    err = {"type": "Cancelled", "message": "cancelled by slimlab-engine cancel"}
    run_doc = read_json(layout.status_file) or {}
    if run_doc.get("state") == "running" and _writer_alive(run_doc):
        print(f"{layout.root}: the orchestrator (pid {run_doc.get('pid')}) is still alive; it records the cancel",
              file=out or sys.stdout)
        return

    def stage_change(s: str) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
        def change(st: dict[str, Any]) -> dict[str, Any] | None:
            if not (st.get("state") in ("running", "pending") or s in lost) or _writer_alive(st):
                return None
            if st.get("state") in ("running", "pending"):
                st.update(state="cancelled", ended_at=now_iso())
            message = f"cancelled by slimlab-engine cancel; {lost[s]}" if s in lost else err["message"]
            st.update(updated_at=now_iso(), error={**err, "message": message}, phase=None)
            return st
        return change

    for s in layout.stages_on_disk():
        update_status(layout.stage_status_file(s), stage_change(s))
    if lost:
        err = {**err, "message": err["message"] + "; " + "; ".join(f"{s}: {m}" for s, m in lost.items())}

    def run_change(st: dict[str, Any]) -> dict[str, Any] | None:
        if st.get("state") not in ("running", "pending") or _writer_alive(st):
            return None
        st.update(state="cancelled", ended_at=now_iso(), updated_at=now_iso(), error=err, running=[])
        for v in (st.get("stages") or {}).values():
            if isinstance(v, dict) and v.get("state") == "running":
                v.update(state="cancelled", pid=None)
        return st

    update_status(layout.status_file, run_change)
