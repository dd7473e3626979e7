"""Compare's Decide data: a directory that is not (yet) a readable run shows nothing; an engine bug is
not turned into an empty chart."""

from __future__ import annotations

import pytest

import engine.contract
from app.screens.compare import decide_data


def test_a_directory_that_is_no_run_shows_nothing(tmp_path):
    ylabel, points, _, searches, rows, _, frontiers = decide_data([tmp_path / "not-a-run"])
    assert (points, searches, rows, frontiers) == ([], [], [], [])


def test_an_engine_bug_is_not_an_empty_chart(tmp_path, monkeypatch):
    def broken(run_dir):
        raise RuntimeError("a bug in read_model_rows")

    monkeypatch.setattr(engine.contract, "read_model_rows", broken)
    with pytest.raises(RuntimeError, match="a bug in read_model_rows"):
        decide_data([tmp_path / "not-a-run"])
