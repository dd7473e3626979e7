"""Starting and stopping engine processes. The TUI never runs training itself: a run is a
`slimlab-engine run FILE --detach` process in its own session, so it outlives the TUI."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from engine.contract.engine_env import engine_pythonpath

LAUNCH_WAIT_S = 20.0  # `run --detach` returns once the orchestrator is started


@dataclass(frozen=True)
class CommandResult:
    ok: bool
    command: list[str]
    output: str
    pid: int | None = None

    @property
    def summary(self) -> str:
        lines = [ln for ln in self.output.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else ("done" if self.ok else "failed")


def engine_command() -> list[str]:
    """`slimlab-engine` of this interpreter's environment, else `python -m engine`."""
    override = os.environ.get("SLIMLAB_ENGINE")
    if override:
        return shlex.split(override)
    script = Path(sys.executable).parent / "slimlab-engine"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "engine"]


def _env() -> dict[str, str]:
    """Make `python -m engine` import the same engine package the TUI imported."""
    env = dict(os.environ)
    env["PYTHONPATH"] = engine_pythonpath()
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_command(exp_file: str | Path, runs_dir: str | Path | None = None) -> list[str]:
    cmd = [*engine_command(), "run", str(exp_file), "--detach"]
    if runs_dir is not None:
        cmd += ["--runs-dir", str(runs_dir)]
    return cmd


def cancel_command(run_dir: str | Path, now: bool = False) -> list[str]:
    return [*engine_command(), "cancel", str(run_dir), *(["--now"] if now else [])]


def launch_detached(exp_file: str | Path, runs_dir: str | Path | None = None,
                    wait_s: float = LAUNCH_WAIT_S) -> CommandResult:
    """Start `slimlab-engine run FILE --detach` in a new session (no controlling terminal, so
    neither quitting the TUI nor a dropped SSH connection sends it SIGHUP)."""
    cmd = run_command(exp_file, runs_dir)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True, env=_env())
    except OSError as e:
        return CommandResult(False, cmd, f"cannot start {cmd[0]}: {e}")
    try:
        out, _ = proc.communicate(timeout=wait_s)
    except subprocess.TimeoutExpired:
        # Still in the foreground part; let it go on and reap it later so it leaves no zombie.
        threading.Thread(target=proc.communicate, daemon=True).start()
        return CommandResult(True, cmd, f"started (pid {proc.pid})", proc.pid)
    return CommandResult(proc.returncode == 0, cmd, out.decode("utf-8", "replace"), proc.pid)


def export_student(run_dir: str | Path, student: str, out: str | Path, timeout_s: float = 600.0) -> CommandResult:
    """`slimlab-engine export RUN STUDENT DIR`: copies the student's folder and writes its model card
    (seconds; no GPU)."""
    cmd = [*engine_command(), "export", str(run_dir), student, str(out)]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, env=_env())
    except (OSError, subprocess.TimeoutExpired) as e:
        return CommandResult(False, cmd, str(e))
    return CommandResult(proc.returncode == 0, cmd, (proc.stdout + proc.stderr).decode("utf-8", "replace"))


def cancel_run(run_dir: str | Path, timeout_s: float | None = None, now: bool = False) -> CommandResult:
    """`slimlab-engine cancel`: no timeout by default, since it waits for a checkpoint however long its
    write takes (a second cancel, `now`, stops the run at once)."""
    cmd = cancel_command(run_dir, now)
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, env=_env())
    except (OSError, subprocess.TimeoutExpired) as e:
        return CommandResult(False, cmd, str(e))
    out = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    return CommandResult(proc.returncode == 0, cmd, out)
