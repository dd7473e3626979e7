"""A stop request goes to a stage's ranks, past its launcher: accelerate's launcher kills its child 5 s
after a SIGTERM, which cut an 8B checkpoint short on an H100 (engine/orchestration/launch.py)."""

from __future__ import annotations

import subprocess
import sys

import psutil

from engine.orchestration.launch import stage_processes

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
