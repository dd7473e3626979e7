"""Faults: SIGTERM saves and cancels, SIGKILL + resume reproduces the uninterrupted run, NaN steps."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _train_util import (
    FINETUNE,
    engine_env,
    prepared_exp,
    read_lines,
    run_inprocess,
)
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)
from safetensors.torch import load_file

LONG = FINETUNE.replace("steps = 12", "steps = 40").replace("checkpoint_interval = 4", "checkpoint_interval = 5") \
    .replace("val_interval = 4", "val_interval = 10")


def _engine(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=cwd, env=engine_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}):\n{proc.stdout.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def _last_step(metrics: Path) -> int:
    try:
        return max((r["step"] for r in read_lines(metrics) if r["split"] == "train"), default=0)
    except (OSError, ValueError):
        return 0


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "finetune" / "model" / "model.safetensors")


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    # Reference: one uninterrupted run.
    ref_exp = prepared_exp(tmp_path, "ref", finetune=LONG)
    assert run_inprocess(ref_exp, "finetune") == 0

    toml = tmp_path / "run.toml"
    exp = prepared_exp(tmp_path, "run", finetune=LONG)
    run = tmp_path / "runs" / "run"
    metrics = run / "finetune" / "metrics.jsonl"
    ckpts = run / "finetune" / "checkpoints"

    # 1) SIGTERM mid-run: status "cancelled", exit 130, a checkpoint at the step it stopped.
    p = _engine(["finetune", str(toml)], tmp_path)
    _wait_for(lambda: _last_step(metrics) >= 3, p)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 130, out
    status = read_lines_json(run / "finetune" / "status.json")
    assert status["state"] == "cancelled"
    stopped = _last_step(metrics)
    assert (ckpts / f"step-{stopped:08d}" / "trainer_state.json").exists(), out
    assert 3 <= stopped < 40
    assert not (run / "finetune" / "model").exists()

    # 2) Resume, then SIGKILL (no chance to save) once a later periodic checkpoint exists.
    p = _engine(["finetune", str(toml)], tmp_path)
    target = (stopped // 5 + 2) * 5
    _wait_for(lambda: (ckpts / f"step-{target:08d}" / "trainer_state.json").exists(), p)
    p.kill()
    p.wait(timeout=60)
    assert not (run / "finetune" / "model").exists(), "the run finished before it was killed"
    killed_at = _last_step(metrics)
    assert killed_at >= target

    # 3) Resume to the end: same final weights as the uninterrupted run, metrics without repeats.
    assert run_inprocess(exp, "finetune") == 0
    a, b = _weights(tmp_path / "runs" / "ref"), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [r["step"] for r in read_lines(metrics) if r["split"] == "train"]
    assert steps == list(range(1, 41))
    ref_losses = [r["loss"] for r in read_lines(tmp_path / "runs" / "ref" / "finetune" / "metrics.jsonl")
                  if r["split"] == "train"]
    assert [r["loss"] for r in read_lines(metrics) if r["split"] == "train"] == pytest.approx(ref_losses, abs=0)
    assert not ckpts.exists()  # removed once model/ is written


def read_lines_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


class _NanInjector:
    """Makes the embedding output NaN on chosen training steps (a real non-finite loss)."""

    def __init__(self, bad_steps: set[int], micro_per_step: int):
        self.bad, self.micro, self.calls = bad_steps, micro_per_step, 0

    def __call__(self, module, _inputs, output):
        if not module.training:
            return output
        step = self.calls // self.micro + 1
        self.calls += 1
        return output * float("nan") if step in self.bad else output


def _run_with_nans(tmp_path: Path, name: str, bad: set[int], extra: str = ""):
    import engine.training.step as train

    exp = prepared_exp(tmp_path, name, finetune=FINETUNE + extra)
    injector = _NanInjector(bad, micro_per_step=2)
    orig = train.Trainer.__init__

    def patched(self, accelerator, student, *a, **kw):
        student.get_input_embeddings().register_forward_hook(injector)
        orig(self, accelerator, student, *a, **kw)

    train.Trainer.__init__ = patched
    try:
        rc = run_inprocess(exp, "finetune")
    finally:
        train.Trainer.__init__ = orig
    return rc, tmp_path / "runs" / name / "finetune"


def test_nan_steps_are_skipped_and_counted(tmp_path: Path) -> None:
    rc, stage = _run_with_nans(tmp_path, "nan1", {3, 7, 8})
    assert rc == 0
    train = [r for r in read_lines(stage / "metrics.jsonl") if r["split"] == "train"]
    by_step = {r["step"]: r for r in train}
    assert by_step[3]["loss"] is None and by_step[7]["loss"] is None
    assert by_step[12]["nan_steps"] == 3
    assert by_step[6]["nan_steps"] == 1
    weights = load_file(stage / "model" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    vals = [r["loss"] for r in read_lines(stage / "metrics.jsonl") if r["split"] == "val"]
    assert vals[-1] < vals[0]  # it kept learning around the bad steps


def test_consecutive_nans_stop_with_clear_error_and_keep_checkpoint(tmp_path: Path, capsys) -> None:
    rc, stage = _run_with_nans(tmp_path, "nan2", set(range(6, 100)), extra="max_nan_steps = 3\n")
    assert rc == 2
    err = capsys.readouterr().err
    assert "not finite for 3 consecutive steps" in err and "step-00000004" in err
    status = read_lines_json(stage / "status.json")
    assert status["state"] == "failed" and "consecutive" in status["error"]["message"]
    good = stage / "checkpoints" / "step-00000004"
    assert (good / "trainer_state.json").exists()
    state = load_file(good / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in state.values())
    assert not (stage / "model").exists()
