"""Staleness comes from the stage's own heartbeat (issue 25): a stage stopped with SIGSTOP showed
"running, updated 2s" after 6 minutes, because the orchestrator kept writing its own status.json."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from datetime import datetime, timezone

from engine.contract import MetricsSummary
from engine.contract.scan import stage_info
from engine.contract.status import STALL_S
from engine.orchestration.commands import _heartbeat


def _doc(pid: int, beat: datetime) -> dict:
    return {"stage": "finetune", "state": "running", "pid": pid, "host": socket.gethostname(),
            "started_at": beat.isoformat(), "updated_at": beat.isoformat()}


def test_a_stopped_or_silent_stage_is_named_from_its_own_heartbeat() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        beat = datetime.now(timezone.utc)
        doc = _doc(proc.pid, beat)
        fresh = beat.timestamp() + STALL_S / 2
        late = beat.timestamp() + 360
        assert stage_info("finetune", doc, MetricsSummary(), fresh).note is None
        hung = stage_info("finetune", doc, MetricsSummary(), late)
        assert hung.state == "running" and hung.note == "no heartbeat for 360s: the stage is hung, or its machine overloaded"
        proc.send_signal(signal.SIGSTOP)
        while open(f"/proc/{proc.pid}/stat").read().split(") ", 1)[1][0] not in "Tt":
            pass  # the kernel stops it at once; wait for /proc to say so
        stopped = stage_info("finetune", doc, MetricsSummary(), late)
        assert stopped.note == f"stopped (SIGSTOP or Ctrl-Z): no heartbeat for 360s; `kill -CONT {proc.pid}` resumes it"
        assert not stopped.cancelling
    finally:
        proc.kill()
        proc.wait()


def test_the_run_list_shows_the_running_stages_heartbeat_not_the_orchestrators() -> None:
    summary = {"state": "running", "updated_at": "2026-01-01T00:10:00+00:00",
               "stages": [{"state": "succeeded", "updated_at": "2026-01-01T00:09:59+00:00"},
                          {"state": "running", "updated_at": "2026-01-01T00:04:00+00:00"}]}
    assert _heartbeat(summary) == "2026-01-01T00:04:00+00:00"
    assert _heartbeat({**summary, "state": "succeeded"}) == "2026-01-01T00:10:00+00:00"
