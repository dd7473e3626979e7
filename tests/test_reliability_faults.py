"""Faults around a run: two `run`s at once, a lock left by a crash, the hand-over to a detached
orchestrator. No timing: locks are taken and tested in a fixed order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.orchestration.run_lock import LOCK_FILE, RunLock
from engine.orchestration.stage_actions import RunBusy

ROOT = Path(__file__).resolve().parent.parent

TOML = """
name = "locked"
[model]
init = "scratch"
arch = {model_type = "llama", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2, num_attention_heads = 2, num_key_value_heads = 1}
tokenizer_train_vocab = 512
[data]
dataset = "builtin:stdlib-docs"
seq_length = 16
[finetune]
steps = 1
global_batch_size = 2
micro_batch_size = 2
"""


def test_a_second_lock_on_the_same_run_is_refused_and_names_the_holder(tmp_path):
    first = RunLock(tmp_path / "run").acquire()
    with pytest.raises(RunBusy, match=rf"already running \(pid {os.getpid()} on "):
        RunLock(tmp_path / "run").acquire()
    first.release()
    RunLock(tmp_path / "run").acquire().release()  # free again


def test_a_lock_file_left_by_a_crash_does_not_block(tmp_path):
    """The kernel drops a flock with its holder; the file that stays behind holds no lock."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_FILE).write_text("pid 999999 on elsewhere since 2020-01-01T00:00:00Z\n")
    lock = RunLock(tmp_path / "run").acquire()
    assert f"pid {os.getpid()}" in (tmp_path / "run" / LOCK_FILE).read_text()
    lock.release()


def test_run_refuses_while_another_orchestrator_holds_the_run(tmp_path, capsys, monkeypatch):
    """Two `run`s started at once both ran prepare in the same folder; the second now stops at
    once, before writing anything."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    f = tmp_path / "exp.toml"
    f.write_text(TOML)
    runs = tmp_path / "runs"
    holder = RunLock(runs / "locked").acquire()
    try:
        assert main(["run", str(f), "--runs-dir", str(runs)]) == 2
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already running (pid" in err
    assert sorted(p.name for p in (runs / "locked").iterdir()) == [LOCK_FILE]  # no experiment.toml, no stage


def test_a_detached_orchestrator_adopts_the_lock_it_is_handed(tmp_path):
    """`run --detach` takes the lock and hands it to the child, so nobody gets in between."""
    parent = RunLock(tmp_path / "run").acquire()
    env = {**os.environ, **parent.hand_over(), "PYTHONPATH": str(ROOT)}
    code = ("import sys; from pathlib import Path; from engine.orchestration.run_lock import RunLock\n"
            "RunLock(Path(sys.argv[1])).acquire(); print('adopted')\n")
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], env=env, pass_fds=(parent.fd,),
                           capture_output=True, text=True)
    assert child.returncode == 0 and "adopted" in child.stdout, child.stderr
    stranger = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert stranger.returncode != 0 and "already running" in stranger.stderr
    parent.release()


def test_cancel_names_a_stage_that_is_its_own_launcher_once(tmp_path):
    """Without accelerate a stage process is both the launcher the run records and the stage:
    `cancel` printed (and signalled) the same pid twice."""
    import io
    import socket

    from engine.contract import RunLayout, now_iso, write_json
    from engine.orchestration.cancel import cancel_run

    layout = RunLayout(tmp_path / "r")
    started = now_iso()
    stage = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        host = socket.gethostname()
        write_json(layout.status_file, {"state": "failed", "host": host, "started_at": started,
                                        "stages": {"finetune": {"pid": stage.pid, "launched_at": started}}})
        write_json(layout.stage_status_file("finetune"), {"stage": "finetune", "state": "running",
                                                          "pid": stage.pid, "host": host, "started_at": started})
        buf = io.StringIO()
        assert cancel_run(layout.root, grace=60, out=buf) == 0
        assert f"SIGTERM sent to {stage.pid}; " in buf.getvalue(), buf.getvalue()
    finally:
        stage.kill()
        stage.wait()


def test_divergence_is_a_rise_well_above_the_best_validation_loss():
    from engine.contract.divergence import divergence

    def val(*losses):
        return [{"step": i * 10, "split": "val", "loss": x} for i, x in enumerate(losses, 1)]

    assert divergence(val(10.4, 45.4)).startswith("validation loss 45.4 at step 20 is well above its best 10.4")
    assert divergence(val(10.4, 6.0, 5.0)) is None  # learning
    assert divergence(val(0.5, 0.2, 0.4)) is None  # twice the best, but within noise of a small set
    assert divergence(val(3.0, 2.5, 2.7)) is None  # a little up: noise
    assert "not a number" in divergence(val(3.0, None))  # non-finite losses are written as null
    assert divergence(val(3.0)) is None and divergence([]) is None


def test_a_failed_rng_restore_stops_the_resume(tmp_path):
    """accelerate logged it at INFO and went on: the resumed run then drew another data order."""
    import torch
    from accelerate import Accelerator

    from engine.errors import UserError
    from engine.training.checkpoint import load_checkpoint, save_checkpoint

    acc = Accelerator(cpu=True)
    acc.prepare(torch.nn.Linear(2, 2))
    path = save_checkpoint(acc, tmp_path / "checkpoints", 3, {"tokens": 12})
    torch.rand(5)  # the RNG moves on after the save
    assert load_checkpoint(acc, path)["step"] == 3  # restored: accepted
    (path / "random_states_0.pkl").unlink()
    with pytest.raises(UserError, match="random state of process 0 was not restored"):
        load_checkpoint(acc, path)
