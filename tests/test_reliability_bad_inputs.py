"""Issue 25's hostile pass: bad input that ran first and failed late, or gave a traceback or a misleading
line. Each is refused before anything is written, with one line and exit code 2. Torch-free."""

from __future__ import annotations

import os

import pytest
from test_reliability_inputs import SCRATCH, _lines, _write

from engine.cli import main


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative data paths resolve here, never in the checkout
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def test_a_runs_dir_that_cannot_be_written(tmp_path, capsys):
    f = _write(tmp_path, SCRATCH, _lines())
    for runs in ("/proc/slimlab-runs", *(() if os.geteuid() == 0 else (str(tmp_path / "ro" / "runs"),))):
        (tmp_path / "ro").mkdir(mode=0o555, exist_ok=True)
        assert main(["run", str(f), "--runs-dir", runs]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot write in" in err and "--runs-dir" in err, err
