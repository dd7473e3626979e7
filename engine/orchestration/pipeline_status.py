"""`<run>/status.json`, the orchestrator's document: the run's state and each planned stage's action,
attempts and process. Its writers and their order: engine/contract/status.py. No torch import.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from engine.config import Experiment
from engine.contract import HEARTBEAT_S, RunLayout, now_iso, read_json, write_json_or_warn
from engine.contract.status import status_lock
from engine.orchestration.stage_actions import StageAction


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

    def write(self, locked: bool = False) -> None:
        """Write the document, under the status lock unless the caller holds it (`locked`): a detaching
        `run` holds it until its own first write is done, so this process's writes come after it."""
        self.doc["updated_at"] = now_iso()
        if locked:
            write_json_or_warn(self.path, self.doc, self.warned)
        else:
            with status_lock(self.path):
                write_json_or_warn(self.path, self.doc, self.warned)
        self._last = time.monotonic()

    def beat(self) -> None:
        if time.monotonic() - self._last >= HEARTBEAT_S:
            self.write()

    def attempt(self, stage: str) -> int:
        """The number of the stage's next attempt."""
        return int(self.doc["stages"][stage]["attempts"]) + 1

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
