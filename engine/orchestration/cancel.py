"""`slimlab-engine cancel RUN_DIR`: stop every process of a run, give them time to save, leave no orphan.

No torch import; psutil walks the process tree.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from engine.config import ConfigError
from engine.contract import RunLayout, effective_state, now_iso, process_of, read_json, write_json


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


def cancel_run(run_dir: str | Path, grace: float = 20.0, out=None) -> int:
    """Stop a run: SIGTERM (the stages save a checkpoint), then SIGKILL whatever is left after `grace`.

    The orchestrator gets SIGTERM and passes it to its stage processes (accelerate passes it to
    every rank). Stage processes left without an orchestrator get it directly. After the grace
    period every process of the run still alive is killed: the orchestrator's descendants, and the
    process groups the run leads (torchrun gives each rank its own), so no orphan keeps GPU memory.
    """
    import psutil

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

    # SIGTERM: to the orchestrator, which passes it on; to stages directly when it is gone
    # (a stage started without accelerate is its own launcher: once per process, not per record)
    targets = [orch] if orch is not None else list({p.pid: p for p in [*launchers, *stage_procs]}.values())
    for p in targets:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    print(f"{run_dir}: SIGTERM sent to {', '.join(str(p.pid) for p in targets)}; "
          f"waiting up to {grace:g}s for checkpoints", file=out, flush=True)

    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        procs.update({pid: p for pid, p in _tree([p for p in procs.values() if _alive(p)]).items() if pid not in me})
        if not any(_alive(p) for p in procs.values()):
            break
        time.sleep(0.2)
    if any(_alive(p) for p in procs.values()):
        procs.update(_group_members(leaders))
        left = [p for pid, p in procs.items() if _alive(p) and pid not in me]
        for p in left:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=10)
        print(f"{run_dir}: SIGKILL sent to {len(left)} process(es) still running after {grace:g}s", file=out)
    _mark_cancelled(layout)
    print(f"{run_dir}: cancelled; `slimlab-engine run {layout.experiment_file}` resumes it", file=out)
    return 0


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


def _mark_cancelled(layout: RunLayout) -> None:
    """Stages and pipeline still saying `running` (their processes are gone now) become `cancelled`."""
    err = {"type": "Cancelled", "message": "cancelled by slimlab-engine cancel"}
    for s in layout.stages_on_disk():
        st = read_json(layout.stage_status_file(s))
        if st and st.get("state") in ("running", "pending"):
            st.update(state="cancelled", ended_at=now_iso(), updated_at=now_iso(), error=err)
            write_json(layout.stage_status_file(s), st)
    st = read_json(layout.status_file)
    if st and st.get("state") in ("running", "pending"):
        st.update(state="cancelled", ended_at=now_iso(), updated_at=now_iso(), error=err, running=[])
        for v in (st.get("stages") or {}).values():
            if isinstance(v, dict) and v.get("state") == "running":
                v.update(state="cancelled", pid=None)
        write_json(layout.status_file, st)
