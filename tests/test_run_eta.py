"""The whole run's ETA (issue 24): stages not started yet count by their own steps at their kind's step
time, or at the mean time the finished stages took; the time per stage so far only where nothing is
known. Hand-made RunInfo/StageInfo and an explicit `now`: no clock, no Textual."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from _app_util import experiment_dict

from app.widgets.run_progress import planned_steps, run_progress, run_progress_text
from engine.config import dumps_toml
from engine.contract import RunInfo, StageInfo

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def at(s: float) -> str:
    return (T0 + datetime.timedelta(seconds=s)).isoformat()


def done(name: str, start: float, end: float, steps: int | None = None) -> StageInfo:
    return StageInfo(name, "succeeded", step=steps or 0, total_steps=steps, started_at=at(start), ended_at=at(end))


def run_of(*stages: StageInfo) -> RunInfo:
    return RunInfo("r", Path("r"), "running", stages, created=0.0)


def test_a_pending_distillation_counts_by_its_steps_not_as_one_short_stage():
    """Prepare and two prunes took 10 s each; distill-a is at step 100 of 500 and says 800 s to go (2 s
    a step); distill-b (500 steps) and eval wait. The run has ~800 + 1000 + 10 s to go; the time per
    stage so far (230 s / 3.2 stages) made distill-b a 72-s stage: ~944 s, half the truth."""
    run = run_of(done("prepare", 0, 10), done("prune-a", 10, 20), done("prune-b", 20, 30),
                 StageInfo("distill-a", "running", step=100, total_steps=500, eta_s=800.0, started_at=at(30)),
                 StageInfo("distill-b"), StageInfo("eval"))
    now = T0.timestamp() + 230.0

    frac, old = run_progress(run, now)  # no steps known: distill-b at the time per stage so far
    assert frac == 3.2 / 6
    per_stage = 230.0 / 3.2
    assert old == pytest.approx(800.0 + per_stage + 10.0)  # eval at the mean of the finished stages (10 s)

    _, eta = run_progress(run, now, {"distill-a": 500, "distill-b": 500})
    truth = 800.0 + 500 * 2.0 + 10.0
    assert eta == pytest.approx(truth)
    assert 800.0 + 2 * per_stage < 0.6 * truth  # the rule before issue 24: both waiting stages at per_stage


def test_a_finished_stage_of_the_kind_gives_the_step_time_and_student_steps_differ():
    """distill-a took 1000 s for 500 steps: distill-c's 800 steps count 1600 s, beside distill-b's own ETA."""
    run = run_of(done("prepare", 0, 20), done("prune-a", 20, 40),
                 done("distill-a", 40, 1040, steps=500),
                 StageInfo("distill-b", "running", step=50, total_steps=500, eta_s=900.0, started_at=at(1040)),
                 StageInfo("distill-c"), StageInfo("eval"))
    _, eta = run_progress(run, T0.timestamp() + 1140.0, {"distill-b": 500, "distill-c": 800})
    assert eta == pytest.approx(900.0 + 800 * 2.0 + 20.0)


def test_without_an_eta_or_a_step_time_the_old_rule_stays():
    """Nothing known of the waiting stages' kinds and no running ETA: the time so far extrapolated."""
    run = run_of(StageInfo("prepare", "running", started_at=at(0)), StageInfo("finetune"))
    assert run_progress(run, T0.timestamp() + 50.0) == (0.0, None)  # nothing done yet: no ETA
    run = run_of(StageInfo("prepare", "succeeded", started_at=at(0)),
                 StageInfo("finetune", "running", step=5, total_steps=10, started_at=at(40)), StageInfo("prune-a"))
    frac, eta = run_progress(run, T0.timestamp() + 60.0, {"finetune": 10})
    assert frac == 0.5
    assert eta == pytest.approx(40.0 * 0.5 + 40.0)  # the rest of finetune and one stage, at 60 s / 1.5 stages


def test_planned_steps_reads_the_experiment_with_each_students_overrides(tmp_path):
    exp = experiment_dict("r", ("depth", "width"))
    exp["distill"]["steps"] = 500
    exp["prune"][1]["distill"] = {"steps": 800}
    (tmp_path / "experiment.toml").write_text(dumps_toml(exp))
    assert planned_steps(tmp_path) == {"finetune": 20, "distill-depth": 500, "distill-width": 800}
    assert planned_steps(tmp_path / "missing") == {}


def test_the_text_uses_the_experiments_steps(tmp_path):
    exp = experiment_dict("r", ("a", "b"))
    exp["distill"]["steps"] = 500
    (tmp_path / "experiment.toml").write_text(dumps_toml(exp))
    stages = (done("prepare", 0, 10), done("finetune", 10, 30, steps=20), done("prune-a", 30, 40),
              done("prune-b", 40, 50),
              StageInfo("distill-a", "running", step=100, total_steps=500, eta_s=800.0, started_at=at(50)),
              StageInfo("distill-b"), StageInfo("eval"))
    run = RunInfo("r", tmp_path, "running", stages, created=0.0)
    assert run_progress_text(run, T0.timestamp() + 250.0).endswith("ETA ~30m")  # 800 + 1000 + 10 s (not ~14m)
