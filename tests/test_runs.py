"""The run-directory contract: atomic status, tolerant metric reading, dead processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from engine.config import loads_experiment
from engine.contract import (
    MetricsSummary,
    RunLayout,
    RunScanner,
    StageStatus,
    append_metrics,
    list_runs,
    now_iso,
    process_of,
    read_json,
    read_metrics,
    read_metrics_summary,
    read_status,
    truncate_metrics_after,
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
    assert read_status(st.path)["state"] == "running"
    st.update(step=4)
    st.finish("succeeded")
    doc = read_json(st.path)
    assert doc["state"] == "succeeded" and doc["step"] == 4 and doc["total_steps"] == 10
    assert doc["config_hash"] == "abc" and doc["ended_at"]
    assert not list(tmp_path.glob("*.tmp")), "no temp file left behind"


def test_dead_process_reads_as_failed(tmp_path: Path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    st = StageStatus(tmp_path, "distill-w")
    st.update(pid=p.pid, state="running")
    seen = read_status(st.path)
    assert seen["state"] == "failed" and seen["error"]["type"] == "ProcessDied"


def test_a_reused_pid_reads_as_failed(tmp_path: Path):
    """The stage died long ago and a newer process (here: a sleeper) now has its pid: not running."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        st = StageStatus(tmp_path, "distill-w")
        st.update(pid=p.pid, state="running", started_at="2020-01-01T00:00:00+00:00")
        seen = read_status(st.path)
        assert seen["state"] == "failed" and seen["error"]["type"] == "ProcessDied"
        assert process_of(p.pid, st.doc["started_at"]) is None  # what `cancel` signals: nothing
        st.update(started_at=now_iso())  # the same process, as the stage records itself
        assert read_status(st.path)["state"] == "running"
        assert process_of(p.pid, st.doc["started_at"]).pid == p.pid
    finally:
        p.kill()
        p.wait()


def test_unreadable_status_is_none(tmp_path: Path):
    (tmp_path / RunLayout.STATUS).write_text('{"state": "runn')  # a torn write (never the engine's)
    assert read_status(tmp_path / RunLayout.STATUS) is None


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
    layout.experiment_file.write_text("")
    assert list_runs(tmp_path) == [layout.root]


# ---- the one summary of a run: the TUI's scanner, `status` and `compare` ----------------------


def _metrics(layout: RunLayout, stage: str, speeds: list[float], vals: dict[int, float]) -> None:
    layout.stage_dir(stage).mkdir(parents=True, exist_ok=True)
    for step, speed in enumerate(speeds, 1):
        append_metrics(layout.metrics_file(stage), {"step": step, "split": "train", "loss": 4.0 / step,
                                                    "tokens": 64 * step, "tokens_per_s": speed})
        if step in vals:
            append_metrics(layout.metrics_file(stage), {"step": step, "split": "val", "loss": vals[step]})


def test_metrics_summary_keeps_history_only_when_asked(tmp_path: Path):
    layout = RunLayout(tmp_path / "r")
    _metrics(layout, "finetune", [1.0, 100.0, 100.0, 110.0], {2: 3.0, 4: 2.5})  # a slow warm-up step
    whole = read_metrics_summary(layout.metrics_file("finetune"))
    assert [r["loss"] for r in whole.val_losses] == [3.0, 2.5]
    assert whole.steady_tokens_per_s == 100.0 and whole.tokens == 256 and whole.last_train["step"] == 4
    tail = MetricsSummary()
    tail.update(layout.metrics_file("finetune"))
    assert tail.vals == [] and tail.speeds == [] and tail.last_val == whole.last_val
    assert tail.last_train == whole.last_train and tail.tokens == 256
    assert read_metrics_summary(layout.metrics_file("missing")).last_train is None


def test_status_reads_a_run_as_the_tui_does(tmp_path: Path):
    from engine.orchestration.commands import run_summary

    layout = RunLayout(tmp_path / "runs" / "r")
    layout.root.mkdir(parents=True)
    layout.experiment_file.write_text('name = "r"\n[model]\npath = "m"\n[data]\ndataset = "w"\n[finetune]\n')
    prep = StageStatus(layout.stage_dir("prepare"), "prepare")
    prep.start()
    prep.finish("succeeded")
    ft = StageStatus(layout.stage_dir("finetune"), "finetune")
    ft.update(state="running", step=3, total_steps=10, pid=_dead_pid())  # a stage that died unannounced
    _metrics(layout, "finetune", [10.0, 20.0, 30.0], {2: 3.0, 3: 9.0})
    summary = run_summary(layout.root)
    run = RunScanner(layout.root.parent).scan_run(layout.root)
    assert set(summary) == {"run", "name", "state", "stage", "pid", "host", "started_at", "updated_at", "error",
                            "stages"}
    assert set(summary["stages"][0]) == {"stage", "state", "step", "total_steps", "train_loss", "val_loss",
                                         "tokens_per_s", "updated_at", "gpus", "error", "warning", "note"}
    assert [s["stage"] for s in summary["stages"]] == [s.name for s in run.stages] == ["prepare", "finetune"]
    assert summary["state"] == run.state == "failed" and summary["error"] == run.error
    got = summary["stages"][1]
    info = run.stage("finetune")
    assert (got["state"], got["step"], got["train_loss"], got["val_loss"], got["tokens_per_s"], got["error"]) == \
        (info.state, info.step, info.train_loss, info.val_loss, info.tokens_per_s, info.error)
    assert got["state"] == "failed" and "ProcessDied" in got["error"] and got["val_loss"] == 9.0
    assert "well above its best" in got["warning"]  # from the whole history, which the TUI does not keep


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid
