"""read_json: a missing file is None, an unreadable one is an error, never "not run yet"."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_pipeline import _exp, _succeed

from engine.contract import RunLayout, RunScanner, read_json
from engine.contract.files import UnreadableFile
from engine.orchestration.stage_actions import stage_actions


def _deny(monkeypatch, target: Path) -> None:
    """Reading `target` fails as a file without read permission does (also when the tests run as root)."""
    real = Path.read_text

    def read_text(self, *a, **kw):
        if self == target:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", read_text)


def test_missing_and_damaged_files_are_none(tmp_path):
    assert read_json(tmp_path / "nope.json") is None
    assert read_json(tmp_path / "nope" / "status.json") is None
    (tmp_path / "bad.json").write_text('{"state": "runn')
    assert read_json(tmp_path / "bad.json") is None


def test_an_unreadable_status_stops_the_plan_instead_of_rerunning(tmp_path, monkeypatch):
    exp = _exp(tmp_path)
    layout = RunLayout(exp.run_dir)
    _succeed(exp, layout, "prepare")
    assert {p.stage: p.action for p in stage_actions(exp, layout)}["prepare"] == "skip"
    _deny(monkeypatch, layout.stage_status_file("prepare"))
    with pytest.raises(UnreadableFile, match="prepare/status.json: cannot read it"):
        stage_actions(exp, layout)


def test_the_run_list_shows_an_unreadable_stage_as_failed(tmp_path, monkeypatch):
    exp = _exp(tmp_path)
    layout = RunLayout(exp.run_dir)
    layout.root.mkdir(parents=True)
    layout.experiment_file.write_text((tmp_path / "exp.toml").read_text())
    _succeed(exp, layout, "prepare")
    _deny(monkeypatch, layout.stage_status_file("prepare"))
    stage = RunScanner(layout.root.parent).scan()[0].stage("prepare")
    assert stage.state == "failed" and "cannot read it" in (stage.error or "")
