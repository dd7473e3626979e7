"""Training faults of issue 16: the 'last good checkpoint' after a blow-up really is good, and tokens/s
is right on every logged step (the one before a validation, the last one). No wall clock: the time
the loop sees comes from a fake clock that advances when a step or a validation runs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _train_util import FINETUNE, prepared_exp, read_lines, run_inprocess
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)
from safetensors.torch import load_file


class _FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tokens_per_s_counts_each_logged_steps_own_time(tmp_path: Path, monkeypatch) -> None:
    """Every step takes 1 s and every validation 5 s on the fake clock: each logged rate must be
    tokens_per_step / 1 s, also on the step before a validation and on the last step (they read
    ~100x too fast), and on the step after a validation (it counted the validation's time)."""
    import engine.training.loop as loop
    import engine.training.step as step

    clock = _FakeClock()
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=clock, time=clock, monotonic=clock))
    launch, validate = step.Trainer.launch, step.Trainer.validate

    def timed_launch(self, *a, **kw):
        out = launch(self, *a, **kw)
        clock.now += 1.0
        return out

    def timed_validate(self, *a, **kw):
        out = validate(self, *a, **kw)
        clock.now += 5.0
        return out

    monkeypatch.setattr(step.Trainer, "launch", timed_launch)
    monkeypatch.setattr(step.Trainer, "validate", timed_validate)
    exp = prepared_exp(tmp_path, "tps", finetune=FINETUNE.replace("steps = 12", "steps = 6")
                       .replace("val_interval = 4", "val_interval = 3") + "log_interval = 1\n")
    assert run_inprocess(exp, "finetune") == 0
    train = [r for r in read_lines(tmp_path / "runs" / "tps" / "finetune" / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    per_step = 8 * 32  # global_batch_size x seq_length
    assert [r["tokens_per_s"] for r in train] == pytest.approx([per_step] * 6)


def test_tokens_per_s_with_a_log_interval_averages_the_steps_since_the_last_line() -> None:
    """log_interval 3: one line per 3 steps, over exactly those 3 steps' times; a pause (validation,
    checkpoint) between steps is no step's time."""
    from engine.training.throughput import StepTimes

    clock = _FakeClock()
    times = StepTimes(cuda=False, clock=clock)
    for s, cost in enumerate([1.0, 2.0, 3.0], start=1):
        start = times.start()
        clock.now += cost
        times.launched(s, start)
    for s in (1, 2, 3):
        times.finished(s)
    assert times.rate(600) == pytest.approx(600 * 3 / 6.0)
    times.pause()
    clock.now += 100.0  # a validation
    start = times.start()
    clock.now += 2.0
    times.launched(4, start)
    clock.now += 0.5  # the host's share between two steps counts
    start = times.start()
    clock.now += 2.0
    times.launched(5, start)
    times.finished(4)
    times.finished(5)
    assert times.rate(600) == pytest.approx(600 * 2 / 4.5)


# ---- a blow-up: the last good checkpoint ----------------------------------------------------


def _run_with_blow_up(tmp_path: Path, name: str, after_step: int, extra: str = ""):
    """The update of step `after_step` multiplies every weight by 1e26, as a huge lr does: that step's
    loss is still finite (computed before the update), the next ones are not."""
    import engine.training.step as step

    finetune = FINETUNE.replace("steps = 12", "steps = 20").replace("checkpoint_interval = 4", "checkpoint_interval = 2")
    exp = prepared_exp(tmp_path, name, finetune=finetune + extra)
    launch = step.Trainer.launch
    launched = {"n": 0}

    def blowing_launch(self, *a, **kw):
        out = launch(self, *a, **kw)
        launched["n"] += 1
        if launched["n"] == after_step:
            with torch.no_grad():
                for p in self.unwrapped().student.parameters():
                    p.mul_(1e26)
        return out

    step.Trainer.launch = blowing_launch
    try:
        rc = run_inprocess(exp, "finetune")
    finally:
        step.Trainer.launch = launch
    return rc, tmp_path / "runs" / name / "finetune"


def test_the_last_good_checkpoint_after_a_blow_up_holds_sane_weights(tmp_path: Path, capsys) -> None:
    """Checkpoints every 2 steps; step 6's update blows the weights up (loss 6 finite, 7.. not). The
    checkpoints at 6 and 8 hold weights of ~1e26: the error must name step 4, whose weights step 5
    trained from with a finite loss, and a rerun must resume from it."""
    from engine.contract.checkpoints import latest_checkpoint

    rc, stage = _run_with_blow_up(tmp_path, "blow", after_step=6, extra="max_nan_steps = 3\n")
    assert rc == 2
    err = capsys.readouterr().err
    assert "not finite for 3 consecutive steps" in err and "step-00000004 (step 4)" in err, err
    found = latest_checkpoint(stage / "checkpoints")
    assert found is not None and found[0] == 4  # the bad ones are gone: a rerun resumes from step 4
    weights = load_file(found[1] / "model.safetensors")
    assert all(torch.isfinite(v).all() and v.abs().max() < 1e3 for v in weights.values())
    status = json.loads((stage / "status.json").read_text())
    assert status["state"] == "failed" and "step-00000004" in status["error"]["message"]
