"""A training stage's stop request: SIGTERM, SIGINT or SIGHUP sets a flag the loop reads between steps
(engine/training/loop.py), so the running step finishes and a checkpoint is saved before Cancelled is
raised; the request is acknowledged in status.json at once (`cancel`: engine/contract/cancelling.py)."""

from __future__ import annotations

import signal
from typing import Any

from engine.contract import now_iso
from engine.errors import Cancelled

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # a terminal hangup is a cancel too


class StopFlag:
    """SIGTERM/SIGINT/SIGHUP set a flag; the loop checks it between steps, saves and raises Cancelled.
    The first one is acknowledged in status.json (`cancel`); a second Ctrl-C means "now"."""

    def __init__(self, *statuses: Any) -> None:
        self.signame: str | None = None
        self.signum: int | None = None
        self.statuses = [s for s in statuses if s is not None]  # StageStatus of each stage, main process only
        self._prev: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in STOP_SIGNALS:
            self._prev[sig] = signal.getsignal(sig)
            signal.signal(sig, self._set)
        return self

    def _set(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signame is not None:
            if signum == signal.SIGINT:  # Ctrl-C twice: stop now, even mid-save (the previous checkpoint stays)
                raise Cancelled(f"{name}, twice")
            return
        self.signame, self.signum = name, signum
        for status in self.statuses:
            status.update_soon(cancel={"signal": name, "at": now_iso()})

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._prev.items():
            signal.signal(sig, handler)
        outer = self._prev.get(self.signum) if self.signum is not None else None
        if isinstance(getattr(outer, "__self__", None), StopFlag):  # nested (a group's student finishing):
            outer(self.signum, None)  # the stop request is the group's too
