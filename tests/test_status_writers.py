"""Each status.json has its writers in one order (engine/contract/status.py): a later writer never lands
under an earlier one's document. Each test makes the race happen deterministically (no timing): the
competing write is done at the worst moment, and the test reads which document survived."""

from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

from _experiments import scratch_toml

from engine.config import load_experiment
from engine.contract import RunLayout, now_iso, read_json, stage_status_doc, write_json
from engine.orchestration import cancel, run, stage_runs
from engine.orchestration.orchestrator import Orchestrator
from engine.orchestration.pipeline_status import PipelineStatus
from engine.orchestration.run import RunOptions, write_experiment
from engine.orchestration.stage_actions import stage_actions

TOML = scratch_toml("writers")


def _run(tmp_path: Path):
    f = tmp_path / "exp.toml"
    f.write_text(TOML)
    exp = load_experiment(f)
    exp.runs_dir = str(tmp_path / "runs")
    layout = RunLayout(exp.run_dir)
    return write_experiment(exp, layout), layout


def _popen_module(popen) -> SimpleNamespace:
    return SimpleNamespace(Popen=popen, STDOUT=subprocess.STDOUT, DEVNULL=subprocess.DEVNULL)


def test_the_orchestrators_placeholder_never_lands_over_the_stages_own_status(tmp_path, monkeypatch):
    """The stage process writes its status.json as soon as it starts; the orchestrator's 'running'
    placeholder, written after Popen, replaced a stage that had already finished (it then read
    'running' from a process that exited 0, and called the stage failed)."""
    exp, layout = _run(tmp_path)

    def popen(argv, **kw):  # a stage that starts, works and finishes before Popen returns
        write_json(layout.stage_status_file("prepare"), stage_status_doc(
            "prepare", exp.stage_hash("prepare"), state="succeeded", total_steps=7, ended_at=now_iso()))
        return SimpleNamespace(pid=os.getpid(), returncode=0, poll=lambda: 0)

    monkeypatch.setattr(stage_runs, "subprocess", _popen_module(popen))
    plans = stage_actions(exp, layout, only=["prepare"])
    out = io.StringIO()
    rc = Orchestrator(exp, layout, plans, [], [], tail=False, out=out).run()
    doc = read_json(layout.stage_status_file("prepare"))
    assert (rc, doc["state"], doc["total_steps"]) == (0, "succeeded", 7), out.getvalue()


def test_run_detach_writes_the_run_status_before_the_orchestrator_never_after(tmp_path, monkeypatch):
    """`run --detach` says at once who runs the run; the orchestrator it started rewrites the same file.
    When the orchestrator wrote first, the parent's document (the plan, no progress) replaced its own."""
    exp, layout = _run(tmp_path)
    plans = stage_actions(exp, layout)
    settled = threading.Event()  # the orchestrator's first write is done, or waits for the parent's
    real_flock = fcntl.flock

    def flock(fd, op):  # says when the orchestrator's thread would wait for the lock, then waits
        if threading.current_thread().name == "orchestrator" and op == fcntl.LOCK_EX:
            try:
                return real_flock(fd, op | fcntl.LOCK_NB)
            except BlockingIOError:
                settled.set()
        return real_flock(fd, op)

    def orchestrator_starts() -> None:
        status = PipelineStatus(layout, exp, plans, [], ["orchestrator"])
        status.doc["stages"]["prepare"].update(state="running", attempts=1)
        status.write()
        settled.set()

    threads: list[threading.Thread] = []

    def popen(argv, **kw):  # the orchestrator starts and writes before Popen returns to the parent
        threads.append(threading.Thread(target=orchestrator_starts, name="orchestrator"))
        threads[0].start()
        assert settled.wait(60)
        return SimpleNamespace(pid=999_999_999)

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(run, "subprocess", _popen_module(popen))
    assert run._detach(exp, layout, RunOptions(str(layout.experiment_file)), plans, [], None) == 0
    threads[0].join(60)
    doc = read_json(layout.status_file)
    assert (doc["pid"], doc["argv"], doc["stages"]["prepare"]["state"]) == (os.getpid(), ["orchestrator"], "running")


def test_cancel_leaves_the_status_of_a_writer_still_alive(tmp_path):
    """cancel writes last, once the writers are gone: a process that outlived its SIGKILL (or the
    orchestrator, which settles its own stages) keeps its documents; the dead ones' become cancelled."""
    _, layout = _run(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = stage_status_doc("prepare", None, state="running", started_at=now_iso())  # this process: alive
    dead = stage_status_doc("finetune", None, state="running", pid=gone.pid, started_at=now_iso())
    for doc in (alive, dead):
        write_json(layout.stage_status_file(doc["stage"]), doc)
    run_doc = {**stage_status_doc("run", None, state="running", started_at=now_iso()), "stages": {}}
    write_json(layout.status_file, run_doc)
    out = io.StringIO()

    cancel._mark_cancelled(layout, {}, out)  # the orchestrator (this process) is alive: nothing written
    assert [read_json(layout.stage_status_file(s))["state"] for s in ("prepare", "finetune")] == ["running"] * 2
    assert read_json(layout.status_file)["state"] == "running" and "still alive" in out.getvalue()

    write_json(layout.status_file, {**run_doc, "pid": gone.pid})  # the orchestrator is gone
    cancel._mark_cancelled(layout, {}, out)
    states = [read_json(p)["state"] for p in (layout.stage_status_file("prepare"),
                                              layout.stage_status_file("finetune"), layout.status_file)]
    assert states == ["running", "cancelled", "cancelled"]
