"""Runs that lie (issue 25): a finished stage whose model was deleted since, or whose status.json is
damaged, is shown as such, and `run` redoes it. Torch-free."""

from __future__ import annotations

from pathlib import Path

from engine.config import loads_experiment
from engine.contract import RunLayout, RunScanner, StageStatus
from engine.orchestration.stage_actions import stage_actions

TOML = """
name = "r"
[model]
path = "org/model"
[data]
dataset = "w"
[finetune]
steps = 2
"""


def _finished(tmp_path: Path):
    exp = loads_experiment(TOML.replace('"r"', '"r"\nruns_dir = "' + str(tmp_path / "runs") + '"'), "r.toml")
    layout = RunLayout(exp.run_dir)
    layout.root.mkdir(parents=True)
    layout.experiment_file.write_text(TOML)
    for stage in ("prepare", "finetune"):
        st = StageStatus(layout.stage_dir(stage), stage, exp.stage_hash(stage))
        st.start()
        st.finish("succeeded")
    (layout.data_dir / "meta.json").write_text("{}")
    model = layout.model_dir("finetune")
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\x02" + b"\x00" * 7 + b"{}")
    return exp, layout


def _stage(layout: RunLayout, name: str):
    return RunScanner(layout.root.parent).scan_run(layout.root).stage(name)


def test_a_deleted_model_is_shown_and_redone(tmp_path: Path) -> None:
    exp, layout = _finished(tmp_path)
    assert _stage(layout, "finetune").note is None
    assert {p.stage: p.action for p in stage_actions(exp, layout)}["finetune"] == "skip"
    (layout.model_dir("finetune") / "model.safetensors").unlink()  # only the weights
    info = _stage(layout, "finetune")
    assert info.state == "succeeded"
    assert info.note == "succeeded, but finetune/model/ holds no weights (deleted?); `run` redoes the stage"
    plan = {p.stage: p for p in stage_actions(exp, layout)}["finetune"]
    assert (plan.action, plan.reason) == ("run", "output missing")
    for f in layout.model_dir("finetune").iterdir():
        f.unlink()
    layout.model_dir("finetune").rmdir()  # the whole folder
    assert _stage(layout, "finetune").note.startswith("succeeded, but finetune/model/config.json is gone")


def test_a_damaged_stage_status_is_failed_not_pending(tmp_path: Path) -> None:
    _exp, layout = _finished(tmp_path)
    layout.stage_status_file("finetune").write_text('{"stage": "finetune", "state": "succ')
    info = _stage(layout, "finetune")
    assert info.state == "failed" and "is not a JSON object (damaged?)" in info.error, info


def test_compare_says_when_results_are_damaged_or_a_model_is_gone(tmp_path: Path) -> None:
    from engine.compare.report import run_warnings

    _exp, layout = _finished(tmp_path)
    assert run_warnings(layout.root) == []
    layout.results_file.parent.mkdir(parents=True, exist_ok=True)
    layout.results_file.write_text('{"models": {"teach')
    (layout.model_dir("finetune") / "model.safetensors").unlink()
    got = run_warnings(layout.root)
    assert "results.json is damaged or empty, so its columns are blank" in got[0], got
    assert got[1] == "r: finetune succeeded, but finetune/model/ holds no weights (deleted?); `run` redoes it"
