"""The run-directory contract: atomic status, tolerant metric reading, dead processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from engine.config import loads_experiment
from engine.contract import (
    RunLayout,
    StageStatus,
    append_metrics,
    list_runs,
    now_iso,
    process_of,
    read_json,
    read_metrics,
    read_status,
    truncate_metrics_after,
    write_json,
)
from engine.errors import UserError
from engine.orchestration.stage_process import run_stage

EXP = loads_experiment('name = "r"\n[model]\npath = "m"\n[data]\ndataset = "w"\n')


def test_metrics_reader_skips_half_written_line_then_picks_it_up(tmp_path: Path):
    f = tmp_path / "metrics.jsonl"
    append_metrics(f, {"step": 1, "split": "train", "loss": 2.0})
    with open(f, "a") as fh:
        fh.write('{"step": 2, "split": "tr')  # a writer caught mid-line
    recs, off = read_metrics(f)
    assert [r["step"] for r in recs] == [1]
    with open(f, "a") as fh:
        fh.write('ain", "loss": 1.5}\n')
    more, off2 = read_metrics(f, off)
    assert [r["loss"] for r in more] == [1.5] and off2 > off


def test_non_finite_numbers_are_written_as_null(tmp_path: Path):
    f = tmp_path / "m.jsonl"
    append_metrics(f, {"step": 1, "loss": float("nan")})
    assert json.loads(f.read_text())["loss"] is None


def test_truncate_metrics_after_a_step(tmp_path: Path):
    f = tmp_path / "m.jsonl"
    for s in range(1, 6):
        append_metrics(f, {"step": s, "loss": 1.0 / s})
    truncate_metrics_after(f, 3)
    assert [r["step"] for r in read_metrics(f)[0]] == [1, 2, 3]


def test_status_lifecycle_and_atomic_json(tmp_path: Path):
    st = StageStatus(tmp_path, "finetune", config_hash="abc")
    st.start(total_steps=10, gpus=[0])
    assert read_status(tmp_path / "status.json")["state"] == "running"
    st.update(step=4)
    st.finish("succeeded")
    doc = read_json(tmp_path / "status.json")
    assert doc["state"] == "succeeded" and doc["step"] == 4 and doc["total_steps"] == 10
    assert doc["config_hash"] == "abc" and doc["ended_at"]
    assert not list(tmp_path.glob("*.tmp")), "no temp file left behind"


def test_dead_process_reads_as_failed(tmp_path: Path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    st = StageStatus(tmp_path, "distill-w")
    st.doc["pid"] = p.pid
    st.doc["state"] = "running"
    write_json(tmp_path / "status.json", st.doc)
    seen = read_status(tmp_path / "status.json")
    assert seen["state"] == "failed" and seen["error"]["type"] == "ProcessDied"


def test_a_reused_pid_reads_as_failed(tmp_path: Path):
    """The stage died long ago and a newer process (here: a sleeper) now has its pid: not running."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        st = StageStatus(tmp_path, "distill-w")
        st.doc.update(pid=p.pid, state="running", started_at="2020-01-01T00:00:00+00:00")
        write_json(tmp_path / "status.json", st.doc)
        seen = read_status(tmp_path / "status.json")
        assert seen["state"] == "failed" and seen["error"]["type"] == "ProcessDied"
        assert process_of(p.pid, st.doc["started_at"]) is None  # what `cancel` signals: nothing
        st.doc["started_at"] = now_iso()  # the same process, as the stage records itself
        write_json(tmp_path / "status.json", st.doc)
        assert read_status(tmp_path / "status.json")["state"] == "running"
        assert process_of(p.pid, st.doc["started_at"]).pid == p.pid
    finally:
        p.kill()
        p.wait()


def test_unreadable_status_is_none(tmp_path: Path):
    (tmp_path / "status.json").write_text('{"state": "runn')
    assert read_status(tmp_path / "status.json") is None


def test_run_stage_records_success_user_error_and_crash(tmp_path: Path):
    layout = RunLayout(tmp_path / "r")
    assert run_stage(EXP, "prepare", lambda ctx: ctx.progress(3), layout) == 0
    assert read_json(layout.stage_status_file("prepare"))["state"] == "succeeded"

    def bad(ctx):
        raise UserError("data.train_files: no file matches 'x.jsonl'")

    assert run_stage(EXP, "prepare", bad, layout) == 2
    doc = read_json(layout.stage_status_file("prepare"))
    assert doc["state"] == "failed" and doc["error"]["type"] == "UserError"

    def crash(ctx):
        raise RuntimeError("boom")

    assert run_stage(EXP, "prepare", crash, layout) == 1
    assert read_json(layout.stage_status_file("prepare"))["error"]["message"] == "boom"
    (layout.root / "experiment.toml").write_text("")
    assert list_runs(tmp_path) == [layout.root]
