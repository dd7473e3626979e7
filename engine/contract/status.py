"""status.json: a stage's (and the orchestrator's) state, and what a reader should believe about it.

A 'running' stage whose process is gone (same host: dead pid; another host: stale heartbeat) is failed.

Who writes which status.json, in order (never two at once; a later writer takes over only once the
earlier one is done, and a read-modify-write holds `status_lock`):

  a stage's <run>/<stage>/status.json
    1. the orchestrator, *before* it starts the stage process: "running", its own pid (a placeholder);
    2. the stage process (rank 0, `StageStatus`), from its start to its end: the only writer meanwhile;
    3. the orchestrator, once the process has exited: the end the stage could not write (killed,
       crashed early) or a divergence (`update_status`);
    4. `slimlab-engine cancel`, once the orchestrator and the stage process are gone (`update_status`).
  the run's <run>/status.json
    1. `run --detach`, holding `status_lock` from before it starts the orchestrator until it has written;
    2. the orchestrator, each write under `status_lock` (so never before `run --detach`'s);
    3. `slimlab-engine cancel`, once the orchestrator is gone (`update_status`).
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.contract.files import now_iso, parse_iso, read_json, write_json_or_warn
from engine.contract.layout import RunLayout

STATES = ("pending", "running", "succeeded", "failed", "cancelled")
HEARTBEAT_S = 10.0  # how often a running stage and the orchestrator refresh updated_at
STALE_S = 300.0  # a heartbeat older than this from another host counts as dead


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


PID_REUSE_SLACK_S = 5.0  # a process created this long after the document's start time is another one


def _created_after(proc, started_at: str | None) -> bool:
    """Whether psutil process `proc` began after `started_at` (so it reuses the recorded pid)."""
    started = parse_iso(started_at)
    return started is not None and proc.create_time() > started.timestamp() + PID_REUSE_SLACK_S


STALL_S = 6 * HEARTBEAT_S  # a running stage whose own heartbeat is this old is stopped or hung


def process_stopped(pid: int | None) -> bool:
    """Whether process `pid` (this host) is stopped (SIGSTOP, Ctrl-Z), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:  # type: ignore[arg-type]
            return f.read().split(") ", 1)[1][0] in "Tt"
    except (OSError, IndexError, TypeError, ValueError):
        return False


def stall_note(doc: dict[str, Any] | None, now: float) -> str | None:
    """For a stage that says it is running: a line when its own heartbeat (updated_at, written by a thread of
    the stage process itself, never by the orchestrator) is older than STALL_S; None otherwise."""
    if not doc or doc.get("state") != "running":
        return None
    beat = parse_iso(doc.get("updated_at"))
    if beat is None or now - beat.timestamp() < STALL_S:
        return None
    quiet = f"no heartbeat for {int(now - beat.timestamp())}s"
    if doc.get("host") == socket.gethostname() and process_stopped(doc.get("pid")):
        return f"stopped (SIGSTOP or Ctrl-Z): {quiet}; `kill -CONT {doc.get('pid')}` resumes it"
    return f"{quiet}: the stage is hung, or its machine overloaded"


def process_of(pid: int | None, started_at: str | None):
    """The psutil process `pid` if it is alive and not a newer process that reuses the number
    (after a reboot or a wrap of the pid counter); None otherwise (or when it is not ours to see)."""
    import psutil

    if not pid:
        return None
    try:
        p = psutil.Process(int(pid))
        if p.status() == psutil.STATUS_ZOMBIE or _created_after(p, started_at):
            return None
        return p
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def process_alive(pid: int | None, started_at: str | None) -> bool:
    """pid_alive, and the process is the one that wrote the document (started no later than it)."""
    if not pid_alive(pid):
        return False
    import psutil

    try:
        return not _created_after(psutil.Process(int(pid)), started_at)
    except psutil.NoSuchProcess:
        return False
    except (psutil.AccessDenied, ValueError):
        return True


def effective_state(status: dict[str, Any] | None) -> str:
    """The state a reader should show: a 'running' stage whose process is gone is 'failed'
    (same host: its pid is dead or now another process's; another host: a stale heartbeat)."""
    if not status:
        return "pending"
    state = status.get("state", "pending")
    if state != "running":
        return state if state in STATES else "pending"
    if status.get("host") == socket.gethostname():
        return "running" if process_alive(status.get("pid"), status.get("started_at")) else "failed"
    beat = parse_iso(status.get("updated_at"))
    if beat and (datetime.now(timezone.utc) - beat).total_seconds() > STALE_S:
        return "failed"
    return "running"


def read_status(path: str | Path) -> dict[str, Any] | None:
    """status.json with `state` replaced by the effective state (dead pid -> failed)."""
    st = read_json(path)
    if st is None:
        return None
    eff = effective_state(st)
    if eff != st.get("state"):
        st = {**st, "state": eff}
        if eff == "failed" and not st.get("error"):
            st["error"] = {"type": "ProcessDied", "message": "the process ended without reporting (killed?)"}
    return st


def stage_status_doc(stage: str, config_hash: str | None, **fields: Any) -> dict[str, Any]:
    """A stage's status.json document (this process, state pending unless `fields` say otherwise)."""
    doc: dict[str, Any] = {
        "stage": stage,
        "state": "pending",
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "host": socket.gethostname(),
        "gpus": [],
        "step": 0,
        "total_steps": None,
        "started_at": None,
        "updated_at": now_iso(),
        "ended_at": None,
        "config_hash": config_hash,
        "error": None,
    }
    doc.update(fields)
    return doc


@contextmanager
def status_lock(path: str | Path) -> Iterator[None]:
    """Exclusive between processes: a flock on `.<name>.lock` beside the status file `path`. The kernel
    drops it when its holder dies. A lock file that cannot be opened leaves the write unlocked (the write
    itself then says what is wrong with the folder)."""
    lock = Path(path).with_name(f".{Path(path).name}.lock")
    try:  # never through a link planted in the run
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def update_status(path: str | Path, change: Callable[[dict[str, Any]], dict[str, Any] | None],
                  warned: set[str] | None = None) -> dict[str, Any] | None:
    """Read-modify-write of a status.json under `status_lock`: `change(doc)` returns the new document, or
    None to leave the file as it is (also when the file is missing). Returns what was written."""
    with status_lock(path):
        doc = read_json(path)
        new = change(dict(doc)) if doc is not None else None
        if new is not None:
            write_json_or_warn(path, new, set() if warned is None else warned)
        return new


class StageStatus:
    """Writes a stage's status.json; a daemon thread keeps the heartbeat fresh while running."""

    def __init__(self, stage_dir: str | Path, stage: str, config_hash: str | None = None):
        self.path = Path(stage_dir) / RunLayout.STATUS
        self.doc = stage_status_doc(stage, config_hash)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()

    def _write(self) -> None:
        with self._lock:
            self.doc["updated_at"] = now_iso()
            write_json_or_warn(self.path, self.doc, self._warned)  # a full disk must not kill the stage

    def _set(self, **fields: Any) -> None:
        """Every change of the document goes through the lock: the heartbeat thread serialises it, and
        a dict changed mid-serialisation would raise there and end the heartbeats silently."""
        with self._lock:
            self.doc.update(fields)

    def start(self, total_steps: int | None = None, gpus: list[int] | None = None, **extra: Any) -> None:
        self._set(state="running", started_at=now_iso(), ended_at=None, error=None,
                  total_steps=total_steps, gpus=gpus or [], **extra)
        self._write()
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, daemon=True, name="heartbeat")
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._write()

    def update(self, step: int | None = None, **fields: Any) -> None:
        with self._lock:  # the heartbeat thread serialises the document meanwhile
            if step is not None:
                self.doc["step"] = step
            self.doc.update(fields)
        self._write()

    def update_soon(self, **fields: Any) -> None:
        """`update` from a signal handler: on a thread, since the interrupted main thread may hold the lock."""
        threading.Thread(target=self.update, kwargs=fields, daemon=True, name="status-update").start()

    def finish(self, state: str, error: BaseException | str | None = None) -> None:
        assert state in STATES
        self._stop.set()
        err = None
        if isinstance(error, BaseException):
            err = {"type": type(error).__name__, "message": str(error).strip().splitlines()[0] if str(error) else ""}
        elif error:  # a line of the stage's own: "cancelled by SIGTERM at step 57; ..." is no error
            err = {"type": "Cancelled" if state == "cancelled" else "Error", "message": str(error)}
        self._set(state=state, ended_at=now_iso(), error=err)
        self._write()
