"""One orchestrator per run directory: an exclusive `flock` on `<run>/run.lock`.

Two `run` commands started at the same instant both passed the status.json check and ran prepare
in the same folder. The kernel releases a flock when its holder dies, however it dies, so a crash
leaves no stale lock behind; the file itself stays and says who held it last. `run --detach`
takes the lock and hands it to the orchestrator it starts (the open file travels with the child).
No torch import.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from engine.contract import now_iso
from engine.errors import ConfigError
from engine.orchestration.stage_actions import RunBusy

LOCK_FILE = "run.lock"
LOCK_FD_ENV = "SLIMLAB_RUN_LOCK_FD"  # set for a detached orchestrator: the descriptor it inherits


class RunLock:
    """Held from `acquire` until `release` or the end of the process."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or adopt the one a detaching parent handed over; RunBusy when another holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = _inherited(self.path)
        if fd is None:
            try:  # never through a link: a planted run.lock -> elsewhere would have its target truncated
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
                raise ConfigError(f"{self.path}: is a symbolic link; a run's files are never followed out of "
                                  "it: remove the link") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            root = self.path.parent
            raise RunBusy(f"{root}: already running ({holder or 'another orchestrator'}); follow it with "
                          f"`slimlab-engine status {root}` or stop it with `slimlab-engine cancel {root}`") from None
        self.fd = fd
        self.record(os.getpid())
        return self

    def record(self, pid: int) -> None:
        """Say in the file who holds the lock (for the message a second `run` prints)."""
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {pid} on {socket.gethostname()} since {now_iso()}\n".encode(), 0)

    def hand_over(self) -> dict[str, str]:
        """The environment a child needs to adopt the lock; pass `self.fd` in its pass_fds."""
        assert self.fd is not None
        os.set_inheritable(self.fd, True)
        return {LOCK_FD_ENV: str(self.fd)}

    def release(self) -> None:
        """Close our descriptor: the lock is free unless a child holds the same open file."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _inherited(path: Path) -> int | None:
    """The lock descriptor a detaching parent handed over, when it is open on this very file."""
    text = os.environ.pop(LOCK_FD_ENV, "")
    if not text.isdigit():
        return None
    fd = int(text)
    try:
        held, here = os.fstat(fd), os.stat(path)
    except OSError:
        return None
    return fd if (held.st_dev, held.st_ino) == (here.st_dev, here.st_ino) else None


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""
