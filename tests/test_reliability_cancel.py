"""A cancel never loses work (issue 25): a stage writing its checkpoint is waited for however long the
write takes, the grace comes from the stage's measured step and checkpoint times, `status` says
"cancelling: saving checkpoint at step N", a second cancel means now (and says what was lost), and a
terminal hangup (SIGHUP) cancels like SIGTERM.

The slow step and the slow checkpoint write wait on gate files (tests/_slow_stage.py); the canceller's
clock is the test's, so no assertion depends on how fast this machine is.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _train_util import FINETUNE, ROOT, engine_env, prepared_exp

from engine.contract import RunLayout, read_json
from engine.contract.cancelling import CANCEL_SLACK_S, cancel_grace, cancel_note

ONE_SAVE = FINETUNE.replace("checkpoint_interval = 4", "checkpoint_interval = 100")  # only the cancel saves
GUARD_S = 180.0  # a hung test fails after this; no assertion depends on it


class FakeClock:
    """The canceller's monotonic clock, moved by the test; counts the reads after the last move."""

    def __init__(self) -> None:
        self.t, self.reads = 0.0, 0

    def __call__(self) -> float:
        self.reads += 1
        return self.t

    def jump(self, to: float) -> None:
        self.t, self.reads = to, 0


def _wait_for(pred, proc: subprocess.Popen, what: str) -> None:
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"the stage ended ({proc.returncode}) before {what}:\n{proc.stdout.read()}")
        if time.monotonic() - t0 > GUARD_S:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _start(tmp_path: Path, slow_step: int = 3, until: str = "in-step") -> tuple[subprocess.Popen, Path, RunLayout]:
    prepared_exp(tmp_path, "slow", finetune=ONE_SAVE)
    gates = tmp_path / "gates"
    gates.mkdir()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "_slow_stage.py"), str(gates), "finetune",
                             str(tmp_path / "slow.toml")], cwd=tmp_path, env={**engine_env(), "SLOW_STEP": str(slow_step)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: (gates / until).exists(), proc, until)
    return proc, gates, RunLayout(tmp_path / "runs" / "slow")


def _stage_doc(layout: RunLayout) -> dict:
    return read_json(layout.stage_status_file("finetune")) or {}


def _saving_gate(gates: Path) -> Path | None:
    return next(iter(gates.glob("in-save-*")), None)


def _canceller(layout: RunLayout, clock: FakeClock) -> tuple[threading.Thread, io.StringIO, list]:
    from engine.orchestration.cancel import cancel_run

    out, result = io.StringIO(), []  # grace 1 (fake) second: nothing is killed before the test moves the clock
    t = threading.Thread(target=lambda: result.append(cancel_run(layout.root, grace=1, out=out, clock=clock)),
                         daemon=True)
    t.start()
    return t, out, result


@pytest.mark.slow
def test_a_cancel_waits_for_a_slow_step_and_a_slow_checkpoint_write(tmp_path: Path) -> None:
    from engine.contract import read_metrics_summary
    from engine.contract.scan import stage_info

    def note(layout: RunLayout, stage: str) -> str | None:  # what `status` and the TUI say of the stage
        return stage_info(stage, read_json(layout.stage_status_file(stage)),
                          read_metrics_summary(layout.metrics_file(stage)), time.time()).note

    proc, gates, layout = _start(tmp_path)
    clock = FakeClock()
    canceller, out, result = _canceller(layout, clock)
    try:
        # The stop request lands mid-step; the stage acknowledges it in its status.json.
        _wait_for(lambda: isinstance(_stage_doc(layout).get("cancel"), dict), proc, "the stage's acknowledgement")
        assert note(layout, "finetune").startswith("cancelling: finishing step")
        (gates / "release-step").touch()
        _wait_for(lambda: _saving_gate(gates) is not None, proc, "the checkpoint write")
        step = int(_saving_gate(gates).name.rsplit("-", 1)[1])
        assert note(layout, "finetune") == f"cancelling: saving checkpoint at step {step}"
        # Any grace is long over now; a stage that is saving is still waited for.
        clock.jump(1e9)
        _wait_for(lambda: clock.reads >= 3, proc, "the canceller to look again")
        assert proc.poll() is None and canceller.is_alive(), out.getvalue()
        assert f"cancelling: saving checkpoint at step {step}; waiting for it" in out.getvalue()
        (gates / "release-save").touch()
        canceller.join(GUARD_S)
        assert result == [0], out.getvalue()
        assert proc.wait(GUARD_S) == 130, proc.stdout.read()
    finally:
        proc.kill()
        (gates / "release-step").touch()
        (gates / "release-save").touch()
    assert "SIGKILL" not in out.getvalue(), out.getvalue()
    assert "progress lost" not in out.getvalue(), out.getvalue()
    doc = _stage_doc(layout)
    assert doc["state"] == "cancelled" and doc["phase"] is None, doc
    assert doc["error"]["message"] == f"cancelled by SIGTERM at step {step}; its checkpoint is saved and `run` resumes from it"
    assert step >= 3 and doc["checkpoint_s"] > 0 and doc["step_s"] > 0
    state = json.loads((layout.checkpoints_dir("finetune") / f"step-{step:08d}" / "trainer_state.json").read_text())
    assert state["step"] == step
    assert not (layout.root / "cancel.json").exists()


@pytest.mark.slow
def test_a_second_cancel_stops_now_and_says_what_was_lost(tmp_path: Path) -> None:
    proc, gates, layout = _start(tmp_path)
    clock = FakeClock()
    first, out, result = _canceller(layout, clock)
    try:
        _wait_for(lambda: isinstance(_stage_doc(layout).get("cancel"), dict), proc, "the stage's acknowledgement")
        (gates / "release-step").touch()
        _wait_for(lambda: _saving_gate(gates) is not None, proc, "the checkpoint write")
        second = subprocess.run([sys.executable, "-m", "engine", "cancel", str(layout.root)], cwd=tmp_path,
                                env=engine_env(), capture_output=True, text=True, timeout=GUARD_S)
        assert second.returncode == 0, second.stderr
        assert "this second cancel stops the run now" in second.stdout, second.stdout
        assert proc.wait(GUARD_S) == -signal.SIGKILL
        first.join(GUARD_S)
        assert result == [0], out.getvalue()
    finally:
        proc.kill()
        (gates / "release-step").touch()
        (gates / "release-save").touch()
    doc = _stage_doc(layout)
    assert doc["state"] == "cancelled", doc
    assert "progress lost" in doc["error"]["message"] and "resume starts from step 0" in doc["error"]["message"]
    assert not list(layout.checkpoints_dir("finetune").glob("step-*"))


@pytest.mark.slow
def test_a_cancel_while_the_final_model_is_written_waits_and_the_stage_succeeds(tmp_path: Path) -> None:
    proc, gates, layout = _start(tmp_path, slow_step=0, until="in-model")
    clock = FakeClock()
    canceller, out, result = _canceller(layout, clock)
    try:
        _wait_for(lambda: isinstance(_stage_doc(layout).get("cancel"), dict), proc, "the stage's acknowledgement")
        assert cancel_note(_stage_doc(layout)) == "cancelling: saving the model at step 12"
        clock.jump(1e9)
        _wait_for(lambda: clock.reads >= 3, proc, "the canceller to look again")
        assert proc.poll() is None and canceller.is_alive(), out.getvalue()
        (gates / "release-model").touch()
        canceller.join(GUARD_S)
        assert result == [0], out.getvalue()
        assert proc.wait(GUARD_S) == 0, proc.stdout.read()
    finally:
        proc.kill()
        (gates / "release-model").touch()
    assert "SIGKILL" not in out.getvalue() and "progress lost" not in out.getvalue(), out.getvalue()
    assert _stage_doc(layout)["state"] == "succeeded"
    assert (layout.model_dir("finetune") / "config.json").exists()


@pytest.mark.slow
def test_a_terminal_hangup_saves_a_checkpoint_like_sigterm(tmp_path: Path) -> None:
    proc, gates, layout = _start(tmp_path)
    try:
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: isinstance(_stage_doc(layout).get("cancel"), dict), proc, "the stage's acknowledgement")
        (gates / "release-step").touch()
        (gates / "release-save").touch()
        assert proc.wait(GUARD_S) == 130, proc.stdout.read()
    finally:
        proc.kill()
    doc = _stage_doc(layout)
    assert doc["state"] == "cancelled" and doc["cancel"]["signal"] == "SIGHUP", doc
    assert [p.name for p in layout.checkpoints_dir("finetune").glob("step-*")] == [f"step-{doc['step']:08d}"]


def test_the_grace_comes_from_the_stages_measured_step_and_checkpoint_times() -> None:
    assert cancel_grace({"step_s": 30.0, "checkpoint_s": 100.0}) == 2 * 30 + 1.5 * 100 + CANCEL_SLACK_S
    assert cancel_grace({"step_s": 30.0, "checkpoint_s": 100.0, "val_s": 50.0}) == 2 * 30 + 50 + 1.5 * 100 + CANCEL_SLACK_S
    assert cancel_grace({"step_s": 3.0}) == 6 + CANCEL_SLACK_S  # no checkpoint yet: the stage reports "saving"
    assert cancel_grace({"step_s": float("nan"), "checkpoint_s": None}) == 0.0  # the canceller's --grace applies
    first = {"started_at": "2026-01-01T00:00:00+00:00", "total_steps": 100}  # in its first step (load, compile)
    assert cancel_grace(first, now=1767225600.0 + 300) == 300 + CANCEL_SLACK_S
    assert cancel_grace({**first, "total_steps": None}, now=1767225600.0 + 300) == 0.0  # no training stage
    assert cancel_note({"state": "running", "step": 7}) is None
    assert cancel_note({"state": "running", "step": 7, "cancel": {}}).startswith("cancelling: finishing step 8")
    assert cancel_note({"state": "running", "step": 8, "cancel": {}, "phase": "saving", "saving_step": 8}) \
        == "cancelling: saving checkpoint at step 8"


@pytest.mark.parametrize("grace", ["nan", "inf", "-1"])
def test_cancel_refuses_a_grace_that_is_no_number_of_seconds(tmp_path: Path, grace: str) -> None:
    r = subprocess.run([sys.executable, "-m", "engine", "cancel", str(tmp_path), f"--grace={grace}"],
                       env=engine_env(), capture_output=True, text=True, timeout=GUARD_S)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--grace" in r.stderr, r.stderr


LAUNCHER = """
import signal, subprocess, sys, time
from pathlib import Path
d = Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *a: (d / "launcher-got-term").touch())
rank = subprocess.Popen([sys.executable, "-c", RANK, "-m", "engine", "distill", str(d)])
print(rank.pid, flush=True)
sys.exit(rank.wait())
"""
RANK = """
import signal, sys, time
from pathlib import Path
d = Path(sys.argv[-1])
signal.signal(signal.SIGTERM, lambda *a: ((d / "rank-got-term").touch(), sys.exit(0)))
(d / "rank-ready").touch()
while True:
    time.sleep(0.05)
"""


def test_without_an_orchestrator_the_sigterm_goes_to_the_ranks_past_the_launcher(tmp_path: Path) -> None:
    """accelerate's launcher kills its child 5 s after a SIGTERM (an 8B cancel lost its checkpoint): a
    cancel of a stage whose orchestrator is gone signals the ranks, and the launcher ends with them."""
    import socket

    import psutil

    from engine.contract import now_iso, write_json
    from engine.orchestration.cancel import cancel_run

    layout = RunLayout(tmp_path / "r")
    started = now_iso()
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER.replace("RANK", repr(RANK)), str(tmp_path)],
                                stdout=subprocess.PIPE, text=True)
    try:
        rank = int(launcher.stdout.readline())
        _wait_for(lambda: (tmp_path / "rank-ready").exists(), launcher, "the rank")
        host = socket.gethostname()
        write_json(layout.status_file, {"state": "failed", "host": host, "started_at": started,
                                        "stages": {"distill-x": {"pid": launcher.pid, "launched_at": started}}})
        write_json(layout.stage_status_file("distill-x"), {"stage": "distill-x", "state": "running", "pid": rank,
                                                           "host": host, "started_at": started})
        out = io.StringIO()
        assert cancel_run(layout.root, grace=60, out=out) == 0
        assert f"SIGTERM sent to {rank};" in out.getvalue(), out.getvalue()
        assert launcher.wait(GUARD_S) == 0
        assert (tmp_path / "rank-got-term").exists() and not (tmp_path / "launcher-got-term").exists()
    finally:
        for p in psutil.Process(launcher.pid).children(recursive=True) if launcher.poll() is None else []:
            p.kill()
        launcher.kill()
        launcher.wait()


def test_a_cancelled_stage_reads_plainly_not_as_an_error(tmp_path: Path) -> None:
    from engine.contract import StageStatus
    from engine.contract.scan import format_error

    st = StageStatus(tmp_path / "finetune", "finetune")
    st.finish("cancelled", "cancelled by SIGTERM at step 5; its checkpoint is saved and `run` resumes from it")
    assert st.doc["error"]["type"] == "Cancelled"
    assert format_error(st.doc["error"]) == ("cancelled by SIGTERM at step 5; its checkpoint is saved and `run` "
                                             "resumes from it")
    assert format_error({"type": "DiskFull", "message": "no space left"}) == "DiskFull: no space left"
