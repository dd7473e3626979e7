"""A non-resumable change never discards an interrupted stage's checkpoints on its own (issue 25): `run`
refuses before anything is written, unless --force. Torch-free."""

from __future__ import annotations

from pathlib import Path

import pytest
from _train_util import FINETUNE, experiment_toml

from engine.config import ConfigError, loads_experiment
from engine.contract import RunLayout, write_json
from engine.orchestration.discard_guard import check_no_silent_discard
from engine.orchestration.stage_actions import stage_actions
from engine.training.checkpoint import resume_key


def _interrupted(tmp_path: Path):
    """A run whose prepare succeeded and whose finetune was cancelled with a checkpoint at step 4."""
    text = experiment_toml("d", tmp_path / "runs", finetune=FINETUNE)
    exp = loads_experiment(text, "d.toml")
    layout = RunLayout(exp.run_dir)
    for stage, state in (("prepare", "succeeded"), ("finetune", "cancelled")):
        write_json(layout.stage_status_file(stage), {"stage": stage, "state": state,
                                                     "config_hash": exp.stage_hash(stage),
                                                     "started_at": "2026-01-01T00:00:00+00:00",
                                                     "ended_at": "2026-01-01T00:00:00+00:00"})
    write_json(layout.data_dir / "meta.json", {"splits": {}})
    ckpt = layout.checkpoints_dir("finetune") / "step-00000004"
    write_json(ckpt / "trainer_state.json", {"step": 4, "resume_key": resume_key(exp, "finetune")})
    return text, layout, ckpt


def _plans(text: str, layout: RunLayout, *overrides: str):
    exp = loads_experiment(text, "d.toml", overrides)
    return exp, stage_actions(exp, layout)


def test_a_non_resumable_change_is_refused_without_force(tmp_path: Path) -> None:
    text, layout, ckpt = _interrupted(tmp_path)
    exp, plans = _plans(text, layout)
    check_no_silent_discard(exp, layout, plans, force=False)  # unchanged: it resumes
    exp, plans = _plans(text, layout, "finetune.steps=40")
    check_no_silent_discard(exp, layout, plans, force=False)  # a resumable change: it resumes too
    exp, plans = _plans(text, layout, "finetune.global_batch_size=16")
    with pytest.raises(ConfigError, match="finetune has a checkpoint at step 4 that this run would discard .*"
                                          "pass --force to start finetune afresh"):
        check_no_silent_discard(exp, layout, plans, force=False)
    check_no_silent_discard(exp, layout, plans, force=True)
    exp, plans = _plans(text, layout, "data.seq_length=16")  # its input (prepare) reruns
    with pytest.raises(ConfigError, match="input prepare reruns"):
        check_no_silent_discard(exp, layout, plans, force=False)
    assert (ckpt / "trainer_state.json").exists()


def test_run_passes_force_to_a_detached_orchestrator() -> None:
    from engine.orchestration.run import RunOptions, _child_argv

    assert "--force" in _child_argv(RunOptions(file="x.toml", force=True), Path("runs"))
    assert "--force" not in _child_argv(RunOptions(file="x.toml"), Path("runs"))
