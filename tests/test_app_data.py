"""The TUI's non-UI logic: run scanning, log tailing, curves, forms, config diff, imports."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _app_util import RunWriter, finished_run, teacher_dir

from app.data.compare import config_diff, flatten, results_rows, stage_config
from app.data.compose import new_experiment, to_toml, validate
from app.data.form_fields import format_field, parse_field, parse_ints
from app.data.series import StageCurves, downsample, ema
from engine.config import ConfigError, dumps_toml, load_experiment, loads_experiment
from engine.contract import MAX_LOG_PPL, RunScanner, append_metrics, perplexity, read_model_rows
from engine.contract.tail import LogTail
from engine.stages import planned_stages

ROOT = Path(__file__).resolve().parent.parent


# ---- scanning ----------------------------------------------------------------------------------


def test_scanner_reads_states_losses_and_dead_processes(tmp_path):
    runs = tmp_path / "runs"
    finished_run(runs, "done")
    w = RunWriter(runs, "live")
    w.stage("prepare", "succeeded", total_steps=None)
    w.stage("finetune", "running", step=4)
    w.metrics("finetune", range(1, 5), val_every=2)
    d = RunWriter(runs, "dead")
    d.stage("prepare", "running")
    d.die("prepare")
    scanner = RunScanner(runs)
    by = {r.name: r for r in scanner.scan()}
    assert set(by) == {"done", "live", "dead"}
    assert by["done"].state == "succeeded"
    assert [s.name for s in by["done"].stages] == ["prepare", "finetune", "prune-depth", "prune-width",
                                                 "distill-depth", "distill-width", "eval"]
    live = by["live"]
    assert live.state == "running" and live.current.name == "finetune"
    ft = live.stage("finetune")
    assert (ft.step, ft.total_steps, ft.fraction) == (4, 20, 0.2)
    assert ft.train_loss == 5.0 / 1.4 and ft.val_loss == 5.0 / 1.4 + 0.1 and ft.tokens_per_s == 1234.0
    assert live.stage("prune-depth").state == "pending"
    assert by["dead"].state == "failed"
    assert "ProcessDied" in by["dead"].stage("prepare").error and by["dead"].error.startswith("prepare: ")


def test_scanner_shows_a_stage_whose_pid_was_reused_as_failed(tmp_path):
    runs = tmp_path / "runs"
    w = RunWriter(runs, "r")
    st = w.stage("finetune", "running")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        st.doc.update(pid=sleeper.pid, started_at="2020-01-01T00:00:00+00:00")  # a newer process has its pid
        st._write()
        run = RunScanner(runs).scan()[0]
        assert run.state == "failed" and "ProcessDied" in run.stage("finetune").error
    finally:
        sleeper.kill()
        sleeper.wait()


def test_scanner_is_incremental_and_tolerates_half_lines(tmp_path):
    runs = tmp_path / "runs"
    w = RunWriter(runs, "r")
    w.stage("finetune", "running", total_steps=None)  # no ETA: a snapshot that only files change
    mfile = w.root / "finetune" / "metrics.jsonl"
    append_metrics(mfile, {"step": 1, "split": "train", "loss": 3.0})
    scanner = RunScanner(runs)
    first = scanner.scan()[0]
    assert first.stage("finetune").train_loss == 3.0
    assert scanner.scan()[0] is first  # nothing changed: the very same snapshot
    with open(mfile, "a") as f:
        f.write('{"step": 2, "split": "train", "lo')
    assert scanner.scan()[0].stage("finetune").train_loss == 3.0
    with open(mfile, "a") as f:
        f.write('ss": 2.5}\n')
    assert scanner.scan()[0].stage("finetune").train_loss == 2.5
    # resume rewrites the file (atomically, shorter): the cursor starts over
    mfile.write_text(json.dumps({"step": 1, "split": "train", "loss": 9.0}) + "\n")
    os.utime(mfile, None)
    assert scanner.scan()[0].stage("finetune").train_loss == 9.0


def test_scanner_reads_only_the_tail_of_a_big_metrics_file(tmp_path):
    runs = tmp_path / "runs"
    w = RunWriter(runs, "big")
    w.stage("finetune", "running", total_steps=100_000)
    mfile = w.root / "finetune" / "metrics.jsonl"
    line = {"split": "train", "loss": 1.0, "tokens": 1, "lr": 1e-4, "tokens_per_s": 5.0, "pad": "x" * 200}
    with open(mfile, "w") as f:
        for step in range(1, 20_001):
            f.write(json.dumps({**line, "step": step, "loss": 1.0 + 1 / step}) + "\n")
            if step == 19_000:  # the last val line, ~200 kB before the end
                f.write(json.dumps({"step": step, "split": "val", "loss": 0.5}) + "\n")
    assert mfile.stat().st_size > 4_000_000
    st = RunScanner(runs).scan()[0].stage("finetune")
    assert st.step == 20_000 and st.train_loss == 1.0 + 1 / 20_000 and st.val_loss == 0.5


def test_runs_appear_and_vanish(tmp_path):
    runs = tmp_path / "runs"
    scanner = RunScanner(runs)
    assert scanner.scan() == []
    RunWriter(runs, "a").stage("prepare", "succeeded", total_steps=None)
    (runs / "not-a-run").mkdir()
    assert [r.name for r in scanner.scan()] == ["a"]
    import shutil

    shutil.rmtree(runs / "a")
    assert scanner.scan() == []


def test_planned_stages_match_the_engine():
    raw = new_experiment()
    raw["model"]["path"] = "org/model"
    exp = loads_experiment(dumps_toml(raw))
    assert planned_stages(raw) == exp.stages()
    del raw["distill"], raw["finetune"]
    assert planned_stages(raw) == loads_experiment(dumps_toml(raw)).stages()


# ---- log tail and curves ------------------------------------------------------------------------


def test_log_tail_follows_partial_lines_truncation_and_bursts(tmp_path):
    log = tmp_path / "stdout.log"
    tail = LogTail(log, start_bytes=64, max_read=1000)
    assert tail.read() == []
    log.write_text("one\ntwo\nthr")
    assert tail.read() == ["one", "two"]
    with open(log, "a") as f:
        f.write("ee\r\nprogress 10%\rprogress 20%\n")
    assert tail.read() == ["three", "progress 20%"]
    log.write_text("new file\n")  # replaced (shorter): start over
    assert tail.read() == ["new file"]
    with open(log, "a") as f:
        f.writelines(f"line {i:04d}\n" for i in range(1000))  # 10 kB burst > max_read
    lines = tail.read()
    assert lines[-1] == "line 0999" and len(lines) < 100 and tail.skipped > 0
    big = tmp_path / "big.log"
    big.write_text("".join(f"old {i}\n" for i in range(100)))
    assert LogTail(big, start_bytes=30).read() == ["old 96", "old 97", "old 98", "old 99"]


def test_stage_curves_split_train_and_val(tmp_path):
    m = tmp_path / "metrics.jsonl"
    c = StageCurves(m)
    assert c.update() is False
    append_metrics(m, {"step": 1, "tokens": 10, "split": "train", "loss": 2.0})
    append_metrics(m, {"step": 1, "tokens": 10, "split": "val", "loss": 2.5})
    append_metrics(m, {"step": 2, "tokens": 20, "split": "train", "loss": float("nan")})
    assert c.update() is True and c.update() is False
    assert c.train.loss == [2.0] and c.val.loss == [2.5] and c.train.xs("tokens") == [10.0]


def test_ema_and_downsample():
    assert ema([1.0, 1.0, 1.0], 0.9) == [1.0, 1.0, 1.0]  # bias-corrected: no ramp from zero
    sm = ema([0.0, 10.0], 0.5)
    assert sm[0] == 0.0 and 0 < sm[1] < 10
    xs = list(range(1000))
    dx, dy = downsample(xs, xs, 50)
    assert len(dx) == 50 and dx[0] == 0 and dx[-1] == 999


# ---- compose --------------------------------------------------------------------------------------


def test_field_parsing_round_trips():
    assert parse_ints("16-19, 30") == [16, 17, 18, 19, 30]
    assert parse_field("ints", "1..3") == [1, 2, 3]
    assert parse_field("ints", "a-b") == "a-b"  # left for the schema to reject, with its message
    assert parse_field("int", "1_000") == 1000 and parse_field("int", "1e3") == "1e3"
    assert parse_field("float", "1e-4") == 1e-4
    assert parse_field("gpus", "all") == "all" and parse_field("gpus", "0,1") == [0, 1]
    for kind, value in (("ints", list(range(16, 32))), ("ints", [1, 5, 6]), ("float", 1e-5), ("strs", ["a", "b"])):
        assert parse_field(kind, format_field(kind, value)) == value


def test_validation_messages_are_checks(tmp_path):
    raw = new_experiment()
    raw["model"]["path"] = "org/model"
    raw["finetune"]["steps"] = "ten"
    v = validate(raw, "exp.toml")
    f = tmp_path / "exp.toml"
    f.write_text(to_toml(raw))
    try:
        load_experiment(f)
    except ConfigError as e:
        expected = str(e).replace(str(f), "exp.toml")
    assert not v.ok and v.message == expected and "finetune.steps" in v.message
    raw["finetune"]["steps"] = 10
    v = validate(raw, "exp.toml")
    assert v.ok and v.plan[0].startswith("experiment my-experiment")
    assert v.students["depth"].params is None  # org/model: no config.json offline


# ---- compare ------------------------------------------------------------------------------------


def test_config_diff_shows_only_differing_keys(tmp_path):
    raw = new_experiment()
    depth, width = stage_config(raw, "distill-depth"), stage_config(raw, "distill-width")
    diff = dict(config_diff({"d": depth, "w": width}))
    assert set(diff) == {"prune.method", "prune.num_layers", "prune.ffn_hidden_size", "prune.hidden_size"}
    assert diff["prune.num_layers"] == [16, None]
    assert config_diff({"a": depth, "b": dict(depth)}) == []
    assert flatten({"a": {"b": [1, 2]}, "c": [{"x": 1}]}) == {"a.b": [1, 2], "c.0.x": 1}


def test_results_table_rows(tmp_path):
    w = finished_run(tmp_path / "runs", "r", students=("depth",))
    rows = {r["model"]: r for r in results_rows(w.root)}
    assert list(rows) == ["teacher", "prune-depth", "distill-depth"]
    assert rows["teacher"]["params"] == 1000 and rows["teacher"]["validation.loss"] == 3.0
    assert rows["teacher"]["validation.perplexity"] == perplexity(3.0)
    w.result("distill-depth", 500, 1.0, split="test")
    assert results_rows(w.root)[2]["test.perplexity"] == perplexity(1.0)


def test_perplexity_has_one_cap_shared_by_eval_compare_and_tui(tmp_path):
    """A diverged model (loss 60) gets the same finite perplexity from eval/results.json in the TUI
    and in `compare`, and from its val loss in `compare` before the eval stage ran."""
    w = finished_run(tmp_path / "runs", "r", students=("depth",))
    w.result("distill-depth", 500, 60.0)
    assert perplexity(60.0) == math.exp(60.0) and perplexity(1e6) == math.exp(MAX_LOG_PPL) < math.inf
    assert results_rows(w.root)[2]["validation.perplexity"] == perplexity(60.0)
    assert {r.label: r.ppl for r in read_model_rows(w.root)}["depth"] == perplexity(60.0)
    (w.root / "eval" / "results.json").unlink()
    w.metrics("distill-depth", range(21, 26), loss0=59.9 * (1 + 0.1 * 25))  # last val loss 60.0
    assert {r.label: r.ppl for r in read_model_rows(w.root)}["depth"] == pytest.approx(perplexity(60.0))


# ---- the TUI imports neither torch nor transformers ------------------------------------------------


def test_app_imports_no_torch_or_transformers(tmp_path):
    """Nor does Compose's preview (engine.compose_preview), of a hub teacher or of a local one it sizes."""
    teacher = teacher_dir(tmp_path)
    code = ("import sys, app, app.main, app.screens.runs, app.screens.run_detail, app.screens.compose, "
            "app.screens.compare, app.screens.gpus, app.screens.help, app.data.compose, app.data.form_fields, "
            "app.data.gpus\n"
            "from app.data.compose import new_experiment, validate\n"
            "raw = new_experiment(); raw['model']['path'] = 'x/y'; validate(raw, 'e.toml')\n"
            f"raw['model']['path'] = {str(teacher)!r}; v = validate(raw, 'e.toml')\n"
            "assert v.teacher_shape == (4, 64, 128), v\n"
            "bad = [m for m in ('torch', 'transformers', 'accelerate', 'datasets') if m in sys.modules]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)})
    assert out.returncode == 0, out.stdout + out.stderr
