"""A stop request goes to a stage's ranks, past its launcher: accelerate's launcher kills its child 5 s
after a SIGTERM, which cut an 8B checkpoint short on an H100 (engine/orchestration/launch.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

from engine.config import loads_experiment
from engine.orchestration.accelerate_launch import rank_exit_code
from engine.orchestration.launch import build_stage_command, stage_processes

LAUNCHER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-m", "engine", "distill"])
print(child.pid, flush=True)
time.sleep(120)
"""


def test_the_stop_request_goes_to_the_engine_process_not_its_launcher():
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE, text=True)
    try:
        child = int(launcher.stdout.readline())
        assert stage_processes(launcher.pid) == [child]
    finally:
        for p in psutil.Process(launcher.pid).children(recursive=True):
            p.kill()
        launcher.kill()
        launcher.wait()


def test_a_stage_without_launcher_is_its_own_target():
    lone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        assert stage_processes(lone.pid) == [lone.pid]
    finally:
        lone.kill()
        lone.wait()
    assert stage_processes(lone.pid) == [lone.pid]  # gone: still named, the caller's kill finds nothing


# ---- a cancel shows no launcher traceback ------------------------------------------------------------

RANK = """
import sys
print("[prepare] cancelled", flush=True)
sys.exit(int(sys.argv[1]))
"""


def _launch_line(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The stage command the orchestrator would run on GPU 0, with a stand-in rank instead of the engine."""
    exp = loads_experiment('name = "l"\n[model]\npath = "x"\n[data]\ndataset = "builtin:stdlib-docs"\n',
                           str(tmp_path / "l.toml"))
    cmd = build_stage_command(exp, "prepare", tmp_path / "l.toml", tmp_path, [0], port=29999, launcher="")
    rank = tmp_path / "rank.py"
    rank.write_text(RANK)
    return cmd.argv[:cmd.argv.index("--module")] + [str(rank)], {**os.environ, **cmd.env}


def test_a_cancelled_stage_shows_no_launcher_traceback_and_keeps_its_exit_code(tmp_path):
    """accelerate's launcher raised CalledProcessError(... exit status 130) when its rank stopped on a
    cancel: a bare traceback in the stage's log, echoed by the orchestrator (seen on an H100 run)."""
    argv, env = _launch_line(tmp_path)
    out = subprocess.run([*argv, "130"], env=env, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 130, text
    assert "Traceback" not in text and "CalledProcessError" not in text, text
    assert "[prepare] cancelled" in text


def test_the_launcher_exits_with_the_code_of_a_failed_rank_and_names_a_kill():
    """torchrun's ChildFailedError and the simple launcher's CalledProcessError both become the rank's
    code (2: a user error, so the run exits 2 as without a launcher); other launcher errors stay raised."""

    class ChildFailedError(Exception):
        def __init__(self, codes):
            self.failures = {i: type("F", (), {"exitcode": c})() for i, c in enumerate(codes)}

    assert rank_exit_code(subprocess.CalledProcessError(2, ["x"])) == 2
    assert rank_exit_code(subprocess.CalledProcessError(-9, ["x"])) == 137
    assert rank_exit_code(ChildFailedError([1, 130])) == 130
    assert rank_exit_code(ChildFailedError([0, 2])) == 2
    assert rank_exit_code(ValueError("a launcher bug")) is None
