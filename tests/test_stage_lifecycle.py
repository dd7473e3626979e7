"""One lifecycle for a stage process (engine/orchestration/stage_process.py): a stage is a group of one.
Each stage of a group settles its own status.json and log; the process exit code sums them up."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from _experiments import scratch_toml

from engine.config import load_experiment
from engine.contract import RunLayout, read_json
from engine.errors import Cancelled, UserError
from engine.orchestration.stage_process import run_stage, run_stages

TOML = scratch_toml("life")
A, B = "prepare", "finetune"  # any two stages: the lifecycle does not look at their kind


@pytest.fixture
def exp(tmp_path: Path):
    f = tmp_path / "exp.toml"
    f.write_text(TOML)
    e = load_experiment(f)
    e.runs_dir = str(tmp_path / "runs")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield e
    for s, h in handlers.items():  # run_stages installs its own
        signal.signal(s, h)


def _state(exp, stage: str) -> tuple[str, str | None]:
    doc = read_json(RunLayout(exp.run_dir).stage_status_file(stage))
    return doc["state"], (doc["error"] or {}).get("type")


def test_a_stage_is_a_group_of_one(exp, capsys):
    assert run_stage(exp, A, lambda ctx: ctx.progress(3)) == 0
    assert _state(exp, A) == ("succeeded", None)

    def bad(ctx):
        raise UserError("data.seq_length: too long")

    assert run_stage(exp, A, bad) == 2
    assert _state(exp, A) == ("failed", "UserError")
    assert "error: data.seq_length: too long" in capsys.readouterr().err  # one stage: no stage name in front


def test_each_stage_of_a_group_settles_its_own_end(exp, capsys):
    def body(ctxs):
        for ctx in ctxs:
            ctx.log(f"[{ctx.stage}] working")
        return {A: None, B: UserError("lr: too high")}

    assert run_stages(exp, [A, B], body) == 2
    assert (_state(exp, A), _state(exp, B)) == (("succeeded", None), ("failed", "UserError"))
    assert "error: finetune: lr: too high" in capsys.readouterr().err
    log = RunLayout(exp.run_dir).log_file(B).read_text()
    assert "[finetune] working" in log and "[prepare]" not in log  # its own lines in its own log


def test_a_cancelled_group_cancels_every_stage_and_a_stage_left_unreported_is_cancelled(exp):
    def cancelled(ctxs):
        raise Cancelled("SIGTERM")

    assert run_stages(exp, [A, B], cancelled) == 130
    assert _state(exp, A) == _state(exp, B) == ("cancelled", "Cancelled")
    assert run_stages(exp, [A, B], lambda ctxs: {A: None}) == 130
    assert (_state(exp, A), _state(exp, B)) == (("succeeded", None), ("cancelled", "Cancelled"))
