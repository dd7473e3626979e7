"""Pilot tests of every screen of the TUI, on run directories written by the engine's own writer."""

from __future__ import annotations

import contextlib
import datetime
import functools
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _app_util import (
    RunWriter,
    finished_run,
    live_finetune_run,
    make_app,
    run_async,
    teacher_dir,
    wait_for,
    write_search_json,
)

from app.data import fmt
from engine.config import load_experiment

FAKE_ENGINE = Path(__file__).with_name("_app_fake_engine.py")


def count_scans(app) -> list[int]:
    """A spy on the app's scanner: the returned list's one number counts the scans made since."""
    scans = [0]
    real = app.scanner.scan

    def scan(*a, **k):
        out = real(*a, **k)
        scans[0] += 1
        return out
    app.scanner.scan = scan
    return scans


async def scans_pass(app, pilot, scans: list[int], n: int = 2, what: str = "scans") -> None:
    """Wait until `n` more scans were made and published (the snapshot after the change was seen)."""
    target = scans[0] + n
    await wait_for(pilot, lambda: scans[0] >= target, what=what)
    await pilot.pause()


def cell(table, row_key: str, col: str) -> str:
    v = table.get_cell(row_key, col)
    return getattr(v, "plain", str(v))


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


@pytest.fixture
def fake_engine(tmp_path, monkeypatch):
    out = tmp_path / "engine_calls.jsonl"
    monkeypatch.setenv("SLIMLAB_ENGINE", f"{sys.executable} {FAKE_ENGINE}")
    monkeypatch.setenv("SLIMLAB_FAKE_ENGINE_OUT", str(out))

    def calls():
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return calls


# ---- Runs ------------------------------------------------------------------------------------


async def open_only_run(app, pilot):
    """Wait for the one run on Runs, open it (enter) and return the Run detail screen."""
    await wait_for(pilot, lambda: app.screen.query_one("#runs-table").row_count == 1)
    await pilot.press("enter")
    await wait_for(pilot, lambda: type(app.screen).__name__ == "RunDetailScreen", what="detail screen")
    return app.screen


def detail_drawn(app, path: Path) -> bool:
    """Run detail of `path` is shown, charts included (mounted: a test may quit then)."""
    screen = app.screen
    return (type(screen).__name__ == "RunDetailScreen" and screen.path == path and bool(screen.query("#loss-chart"))
            and not screen.query_one("#loss-chart").held)


@pytest.mark.parametrize("workarounds", [True, False], ids=["workarounds", "plain-textual"])
@run_async
async def test_runs_screen_lists_runs_and_follows_changes(runs, tmp_path, monkeypatch, workarounds):
    """Also as under a Textual version the workarounds were not checked against (they are off)."""
    from app import textual_workarounds

    monkeypatch.setattr(textual_workarounds, "ENABLED", workarounds)
    finished_run(runs, "old")
    live, ft = live_finetune_run(runs)
    app = make_app(runs, tmp_path)
    scans = count_scans(app)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: table.row_count == 2, what="two runs")
        key = str(live.root)
        assert cell(table, key, "state") == "● running"
        assert cell(table, key, "stages") == "✓●○○○○○"
        assert cell(table, key, "stage") == "finetune"
        assert cell(table, key, "train") == f"{5.0 / 1.2:.3f}"
        assert cell(table, str(runs / "old"), "state") == "✓ succeeded"

        # the run moves on while the screen is open
        live.metrics("finetune", range(3, 11))
        ft.update(step=10)
        await wait_for(pilot, lambda: cell(table, key, "train") == f"{5.0 / 2.0:.3f}", what="new train loss")
        assert "50%" in cell(table, key, "progress")
        assert cell(table, key, "val") == f"{5.0 / 2.0 + 0.1:.3f}"

        # a half-written metrics line is not shown until its newline arrives
        mfile = live.root / "finetune" / "metrics.jsonl"
        line = json.dumps({"step": 11, "split": "train", "loss": 1.25, "tokens": 11 * 256})
        with open(mfile, "a") as f:
            f.write(line[:20])
        ft.update(step=11)  # the status changes, the scanner re-reads: the partial line must be skipped
        await scans_pass(app, pilot, scans, what="scans after the partial line")
        assert "55%" in cell(table, key, "progress")  # the new status was read ...
        assert cell(table, key, "train") == f"{5.0 / 2.0:.3f}"  # ... and the partial line skipped
        with open(mfile, "a") as f:
            f.write(line[20:] + "\n")
        await wait_for(pilot, lambda: cell(table, key, "train") == "1.250", what="completed line")

        # a run started elsewhere appears by itself, newest first
        new = RunWriter(runs, "brand-new")
        new.stage("prepare", "running", total_steps=None)
        await wait_for(pilot, lambda: table.row_count == 3, what="new run")
        assert table.coordinate_to_cell_key((0, 0)).row_key.value == str(new.root)


@run_async
async def test_runs_table_keys_and_pinned_run_column(runs, tmp_path):
    for i in range(30):
        RunWriter(runs, f"run-{i:02d}").stage("prepare", "succeeded", total_steps=None)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: table.row_count == 30, what="30 runs")
        first = table.highlighted_key()
        await pilot.press("G")
        assert table.cursor_row == 29
        await pilot.press("g")
        assert table.cursor_row == 0 and table.highlighted_key() == first
        await pilot.press("end")
        assert table.cursor_row == 29
        await pilot.press("home")
        assert table.cursor_row == 0
        # scrolled sideways, the run's name stays on screen
        table.scroll_to(x=table.max_scroll_x, animate=False)
        await wait_for(pilot, lambda: table.scroll_x > 0, what="scrolled right")
        await pilot.pause()
        assert any("run-29" in line for line in _drawn(table))


@run_async
async def test_whole_run_progress_and_eta(runs, tmp_path):
    """Besides the current stage's progress, the run's: stages done and a whole-run ETA."""
    live, ft = live_finetune_run(runs)  # 7 stages: prepare done, finetune at 2/20
    ft.update(step=10)
    started = min(datetime.datetime.fromisoformat(st.doc["started_at"]).timestamp() for st in live.statuses.values())
    app = make_app(runs, tmp_path, clock=lambda: started + 100)  # 100 s after the first stage began
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: app.screen.query_one("#runs-table").row_count == 1)
        title = app.screen.query_one("#preview-title")
        # (1 + 0.5) / 7 = 21% done in 100 s; to go: finetune's own ETA, then 2 prunes and eval at the time
        # prepare took, and 2 distillations (no distill step time yet) at 100 / 1.5 s each
        await wait_for(pilot, lambda: "run 1/7 stages, 21%, ETA ~" in str(title.render()), what="the run's progress")
        ft_eta = app.runs[0].stage("finetune").eta_s
        assert ft_eta is not None
        prep = app.runs[0].stage("prepare")
        took = (datetime.datetime.fromisoformat(prep.ended_at) - datetime.datetime.fromisoformat(prep.started_at))
        assert f"ETA ~{fmt.duration(ft_eta + 3 * took.total_seconds() + 2 * 100 / 1.5)}" in str(title.render())
        await pilot.press("enter")
        await wait_for(pilot, lambda: "run 1/7 stages, 21%" in str(app.screen.query_one("#detail-title").render()),
                       what="run progress in the detail title")


@run_async
async def test_dead_process_is_shown_failed_with_its_error(runs, tmp_path):
    w = RunWriter(runs, "crashed")
    w.stage("prepare", "succeeded", total_steps=None)
    w.stage("finetune", "running", step=3)
    w.die("finetune")
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: table.row_count == 1)
        assert cell(table, str(w.root), "state") == "✗ failed"
        stages = app.screen.query_one("#stages-table")
        assert cell(stages, "finetune", "state") == "✗ failed"
        title = str(app.screen.query_one("#preview-title").render())
        assert "ProcessDied" in title and "finetune" in title


@run_async
async def test_filter_and_empty_states(runs, tmp_path):
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        empty = app.screen.query_one("#runs-empty")
        await wait_for(pilot, lambda: "No runs" in str(empty.render()), what="empty message")
        for name in ("alpha", "beta", "alphabet"):
            RunWriter(runs, name).stage("prepare", "succeeded", total_steps=None)
        table = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: table.row_count == 3)
        await pilot.press("slash", "a", "l", "p")
        await wait_for(pilot, lambda: table.row_count == 2, what="filtered rows")
        await pilot.press("escape")
        await wait_for(pilot, lambda: table.row_count == 3, what="filter cleared")


# ---- Run detail --------------------------------------------------------------------------------


@run_async
async def test_run_detail_follows_log_chart_and_stages(runs, tmp_path):
    w = RunWriter(runs, "watch")
    w.stage("prepare", "succeeded", total_steps=None)
    ft = w.stage("finetune", "running", step=5)
    w.metrics("finetune", range(1, 6))
    w.log("finetune", [f"boot {i}" for i in range(10)])
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_only_run(app, pilot)
        log = screen.query_one("#log-view")
        chart = screen.query_one("#loss-chart")
        await wait_for(pilot, lambda: log.total_lines == 10, what="log history")
        assert screen.stage_name == "finetune"  # follows the running stage
        await wait_for(pilot, lambda: len(chart.curves[0].ys) == 5, what="train curve")
        assert screen.query_one("#val-chart").curves[0].ys == [pytest.approx(5.0 / 1.5 + 0.1)]  # val at step 5

        # the stage writes more while the screen is open
        w.log("finetune", [f"step {i}" for i in range(300)])
        with open(w.root / "finetune" / "stdout.log", "a") as f:
            f.write("half a li")  # no newline yet: not shown
        w.metrics("finetune", range(6, 11))
        ft.update(step=10)
        await wait_for(pilot, lambda: log.total_lines == 310, what="new log lines")
        assert log.lines[-1] == "step 299"
        await wait_for(pilot, lambda: len(chart.curves[0].ys) == 10, what="chart update")
        with open(w.root / "finetune" / "stdout.log", "a") as f:
            f.write("ne\n")
        await wait_for(pilot, lambda: log.lines[-1] == "half a line", what="completed log line")

        # chart keys: x axis and smoothing
        await pilot.press("x")
        assert "tokens" in chart.xlabel and chart.curves[0].xs[-1] == 10 * 256
        before = chart.smoothing
        await pilot.press("s")
        assert chart.smoothing != before

        # tabs: config shows the resolved experiment.toml; status shows status.json
        await pilot.press("o")
        config = str(screen.query_one("#config-text").render())
        assert 'name = "watch"' in config
        await pilot.press("i")
        assert "finetune" in str(screen.query_one("#status-text").render())

        # the next stage starts: the screen follows it
        ft.finish("succeeded")
        w.stage("prune-depth", "running", total_steps=None)
        w.log("prune-depth", ["calibrating"])
        await wait_for(pilot, lambda: screen.stage_name == "prune-depth", what="follow next stage")
        await wait_for(pilot, lambda: list(log.lines) == ["calibrating"], what="log of the new stage")

        # picking a stage by hand shows its files and stops following
        stage_list = screen.query_one("#stage-list")
        stage_list.focus()
        stage_list.highlighted = 1  # finetune
        await wait_for(pilot, lambda: screen.stage_name == "finetune" and log.total_lines == 311, what="manual pick")
        assert screen.follow is False
        await pilot.press("escape")
        assert type(app.screen).__name__ == "RunsScreen"


def _chart_text(chart) -> list[str]:
    return ["".join(seg.text for seg in chart.render_line(y)) for y in range(chart.size.height)]


@run_async
async def test_distill_chart_gives_train_and_val_their_own_axes(runs, tmp_path):
    """A KD train loss (~0.05) and a val loss (~8.5) each get a panel; log y, zoom and whole-number
    step ticks; a single val point is drawn as a point."""
    w = RunWriter(runs, "kd")
    w.stage("prepare", "succeeded", total_steps=None)
    w.stage("distill-depth", "running", step=20)
    w.metrics("distill-depth", range(1, 21), loss0=0.06, val_every=0)
    path = w.root / "distill-depth" / "metrics.jsonl"
    from engine.contract import append_metrics

    append_metrics(path, {"step": 20, "tokens": 20 * 256, "split": "val", "loss": 8.5})
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_only_run(app, pilot)
        train, val = screen.query_one("#loss-chart"), screen.query_one("#val-chart")
        await wait_for(pilot, lambda: len(train.curves[0].ys) == 20 and not train.held and not val.held,
                       what="the curves")
        assert [c.label for c in train.curves] == ["KD train"] and [c.label for c in val.curves] == ["val"]
        assert val.curves[0].points  # one val value: a point, not a line
        assert max(train.curves[0].ys) < 0.1 and val.curves[0].ys == [8.5]  # each on its own y axis
        assert train.region.y != val.region.y and train.size.height >= 5 and val.size.height >= 5
        await pilot.pause()
        ticks = next(line for line in reversed(_chart_text(train)) if "10" in line and "20" in line)
        assert "." not in ticks  # whole steps, no 10.5
        assert "KD train" in str(screen.query_one("#stage-summary").render())
        await pilot.press("y")
        assert train.log_y and val.log_y
        await pilot.press("z")
        assert train.zoom == 0.5
        await pilot.press("z")  # the last fifth
        await pilot.pause()
        from app.widgets.loss_chart import zoomed

        assert min(zoomed(train.curves, train.zoom)[0].xs) >= 16


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)


@run_async
async def test_cancel_asks_first_then_stops_the_run(runs, tmp_path):
    proc = _sleeper()
    try:
        w = RunWriter(runs, "cancel-me")
        st = w.stage("prepare", "running", total_steps=None)
        st.doc.update(pid=proc.pid, pgid=proc.pid)
        st._write()
        app = make_app(runs, tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            table = app.screen.query_one("#runs-table")
            await wait_for(pilot, lambda: table.row_count == 1)
            await pilot.press("enter")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "RunDetailScreen")
            await pilot.press("c")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", what="confirmation")
            await pilot.press("n")  # keep running
            await pilot.pause(0.2)
            assert proc.poll() is None
            await pilot.press("c")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen")
            await pilot.press("y")
            await wait_for(pilot, lambda: proc.poll() is not None, timeout=20, what="process stopped")
            await wait_for(pilot, lambda: app.screen.run is not None and app.screen.run.state == "cancelled",
                           timeout=10, what="cancelled state")
            await wait_for(pilot, lambda: app.last_command is not None, what="cancel command result")
            assert app.last_command.ok, app.last_command.output
            assert app.last_command.command[-2:] == ["cancel", str(w.root)]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@run_async
async def test_a_confirmed_cancel_shows_cancelling_then_a_neutral_cancelled(runs, tmp_path, fake_engine):
    w = RunWriter(runs, "stop-me")
    w.stage("prepare", "succeeded", total_steps=None)
    ft = w.stage("finetune", "running", step=3)  # this process: alive
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#runs-table")
        key = str(w.root)
        await wait_for(pilot, lambda: table.row_count == 1)
        await pilot.press("c")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", what="confirmation")
        await pilot.press("y")
        # the (fake) engine was asked; until the run stops it reads "cancelling…", not "running"
        await wait_for(pilot, lambda: cell(table, key, "state") == "⊘ cancelling…", what="cancelling")
        await wait_for(pilot, lambda: [c["argv"][0] for c in fake_engine()] == ["cancel"], what="the cancel command")
        await pilot.press("enter")
        await wait_for(pilot, lambda: "cancelling…" in str(app.screen.query_one("#detail-title").render()),
                       what="cancelling in the run's title")
        await pilot.press("escape")
        ft.finish("cancelled", "cancelled by SIGTERM")
        await wait_for(pilot, lambda: cell(table, key, "state") == "⊘ cancelled", what="cancelled")
        assert app.cancelling == set()
    from app.widgets.style import error_markup

    assert error_markup("cancelled", "cancelled by SIGTERM") == "[dim]cancelled by SIGTERM[/]"  # not red
    assert error_markup("failed", "boom").startswith("[$text-error]")


@run_async
async def test_a_stage_saving_on_cancel_is_shown_and_a_second_cancel_stops_it_now(runs, tmp_path, fake_engine):
    """Issue 25: the stage's own report ("cancelling: saving checkpoint at step N") is shown; cancelling
    again asks to stop now, and runs `cancel --now`."""
    w = RunWriter(runs, "saving")
    w.stage("prepare", "succeeded", total_steps=None)
    ft = w.stage("finetune", "running", step=4)
    ft.update(cancel={"signal": "SIGTERM", "at": "x"}, phase="saving", saving_step=4)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        table = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: table.row_count == 1)
        assert cell(table, str(w.root), "state") == "⊘ cancelling…"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "cancelling: saving checkpoint at step 4"
                       in str(app.screen.query_one("#stage-summary").render()), what="the stage's saving note")
        await pilot.press("c")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", what="confirmation")
        assert "already cancelling" in app.screen.question and "now" in app.screen.question
        await pilot.press("y")
        await wait_for(pilot, lambda: [c["argv"] for c in fake_engine()] == [["cancel", str(w.root), "--now"]],
                       what="cancel --now")


@run_async
async def test_resume_relaunches_the_resolved_config_detached(runs, tmp_path, fake_engine):
    w = RunWriter(runs, "stopped")
    w.stage("prepare", "cancelled", total_steps=None)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.query_one("#runs-table").row_count == 1)
        await pilot.press("r")
        await wait_for(pilot, lambda: len(fake_engine()) == 1, timeout=10, what="engine call")
    call = fake_engine()[0]
    assert call["argv"] == ["run", str(w.root / "experiment.toml"), "--detach", "--runs-dir", str(runs)]
    assert call["sid"] == call["pid"] != os.getsid(0)  # its own session: survives the TUI and SSH


# ---- Compose -------------------------------------------------------------------------------------


@run_async
async def test_compose_validates_as_you_type_and_sizes_students(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    teacher = teacher_dir(tmp_path)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ComposeScreen")
        screen = app.screen
        status = screen.query_one("#compose-validation")
        await wait_for(pilot, lambda: screen.validation is not None)
        assert not screen.validation.ok and "model.path" in screen.validation.message

        # the depth student edited to 20 layers (an untouched default student would be sized from the
        # teacher once its config is read); then the teacher path typed key by key (relative to the
        # working directory, as `check` reads it)
        _set_field(screen.query("StudentForm").first(), "num_layers", "20")
        await pilot.click("#f-model-path")
        await pilot.press(*teacher.name)
        await wait_for(pilot, lambda: screen.validation.ok is False and "prune[depth]" in screen.validation.message,
                       what="the depth target is checked against the teacher")
        # the depth student keeps 20 layers of a 4-layer teacher: the same message as `check`
        path = tmp_path / "experiments" / "my-experiment.toml"
        assert screen.validation.message == _check(screen, path, expect_rc=2).removeprefix("error: ")
        assert str(status.render()).startswith("✗ ")

        # fix the students: depth keeps 2 layers, width ffn 128 -> 64 and hidden 64 -> 32
        forms = list(screen.query("StudentForm"))
        _set_field(forms[0], "num_layers", "2")
        _set_field(forms[1], "ffn_hidden_size", "64")
        _set_field(forms[1], "hidden_size", "32")
        await wait_for(pilot, lambda: screen.validation.ok, what="valid experiment")
        # the plan shown is `check`'s, and each student's size is the one `check` prints
        out = _check(screen, path, expect_rc=0)
        assert _steady(screen.validation.plan) == _steady(out.splitlines())
        sizes = screen.validation.students
        for name in ("depth", "width"):
            params, shrink = re.search(rf"prune-{name}:.*\(([\d,]+)\), ([\d.]+)x smaller", out).groups()
            assert sizes[name].params == int(params.replace(",", ""))
            assert f"{sizes[name].shrink:.2f}" == shrink
        teacher_params = int(re.search(r"teacher: .*\(([\d,]+)\)", out).group(1).replace(",", ""))
        assert screen.validation.teacher_params == teacher_params
        assert sizes["depth"].params < teacher_params and sizes["width"].params < teacher_params
        text = str(forms[1].query_one(".student-size").render())
        assert f"{sizes['width'].shrink:.2f}x smaller" in text

        # one invalid student: the message names it, and the other student keeps its size line
        _set_field(forms[1], "hidden_size", "abc")
        await wait_for(pilot, lambda: not screen.validation.ok, what="the invalid student")
        assert "prune[width].hidden_size" in screen.validation.message
        assert "x smaller" in str(forms[0].query_one(".student-size").render())
        assert str(forms[1].query_one(".student-size").render()).startswith("✗ hidden_size: ")  # its own error
        _set_field(forms[1], "hidden_size", "32")
        await wait_for(pilot, lambda: screen.validation.ok)

        # a wrong type: the schema's message, not a crash
        screen.query_one("#f-finetune-steps").value = "ten"
        await wait_for(pilot, lambda: not screen.validation.ok and "finetune.steps" in screen.validation.message)
        screen.query_one("#f-finetune-steps").value = "10"
        await wait_for(pilot, lambda: screen.validation.ok)

        # add a third student, then remove it
        screen.query_one("#add-width").press()
        await wait_for(pilot, lambda: len(screen.query("StudentForm")) == 3)
        assert [p["name"] for p in screen.raw["prune"]] == ["depth", "width", "width2"]
        third = list(screen.query("StudentForm"))[2]
        await wait_for(pilot, lambda: third.query(".remove-student"), what="the third student's form")
        remove = third.query_one(".remove-student")
        assert not remove.can_focus  # not a Tab stop
        remove.press()  # asks first
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", what="remove confirmation")
        await pilot.press("n")
        await wait_for(pilot, lambda: app.screen is screen)
        assert len(screen.query("StudentForm")) == 3
        remove.press()
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", what="remove confirmation")
        await pilot.press("y")
        await wait_for(pilot, lambda: len(screen.query("StudentForm")) == 2)
        assert [p["name"] for p in screen.raw["prune"]] == ["depth", "width"]

        # switch a section off
        screen.query_one("#toggle-eval").value = False
        await wait_for(pilot, lambda: "eval" not in screen.validation.message and screen.validation.ok)

        # save: atomic, and the file is what `check` accepts
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: path.exists(), what="saved file")
        exp = load_experiment(path)
        assert [p.name for p in exp.prune] == ["depth", "width"]
        assert exp.prune[1].hidden_size == 32 and exp.finetune.steps == 10 and exp.eval is None
        assert exp.model.path == teacher.name


def _control(form, key: str):
    return next(c for c in form.query("FieldInput, FieldSelect, FieldCheck") if c.spec.key == key)


def _set_field(form, key: str, value: str) -> None:
    _control(form, key).value = value


def _steady(plan: list[str]) -> list[str]:
    """A plan without the machine's free host memory and disk, which change between two readings."""
    return [re.sub(r"[\d.]+ GiB (of host memory available|free|available)", r"N GiB \1", line) for line in plan]


def _check(screen, path: Path, expect_rc: int) -> str:
    """What `slimlab-engine check` prints for the form's current content saved as `path` (the
    CLI's own entry point, in this process)."""
    from app.data.compose import to_toml
    from engine.cli import main as engine_main

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(screen.raw))
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = engine_main(["check", str(path)])
    finally:
        path.unlink()
    assert rc == expect_rc, out.getvalue() + err.getvalue()
    return (out.getvalue() if expect_rc == 0 else err.getvalue()).strip()


TINY = """# a tiny scratch experiment (this comment must survive a save from Compose)
name = "tiny"
[model]
init = "scratch"
arch = {model_type = "llama", hidden_size = 64, intermediate_size = 128, num_hidden_layers = 4, num_attention_heads = 4, num_key_value_heads = 2}
tokenizer_train_vocab = 512
[data]
dataset = "builtin:stdlib-docs"
seq_length = 32
[finetune]
steps = 7  # few: a demo
global_batch_size = 4
micro_batch_size = 4
[[prune]]
name = "d"
method = "depth"
drop_layers = [1, 2]
[eval]
batches = 2
"""


@run_async
async def test_compose_loads_a_file_and_launches_detached(runs, tmp_path, monkeypatch, fake_engine):
    monkeypatch.chdir(tmp_path)
    exp_dir = tmp_path / "experiments"
    exp_dir.mkdir()
    src = exp_dir / "tiny.toml"
    src.write_text(TINY)
    (exp_dir / "other.toml").write_text(TINY.replace('"tiny"', '"other"'))
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ComposeScreen")
        screen = app.screen
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "OpenFileScreen")
        opts = app.screen.query_one("#open-list")
        await wait_for(pilot, lambda: opts.option_count == 2)
        assert app.focused.id == "open-path"  # typing a path works at once
        await pilot.press("t", "i", "n")  # filters the list
        await wait_for(pilot, lambda: opts.option_count == 1 and opts.get_option_at_index(0).id == str(src))
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: app.screen is screen and screen.raw.get("name") == "tiny"
                       and screen.form_ready.is_set(), what="loaded")
        assert screen.query_one("#f-finetune-steps").value == "7"
        form = screen.query_one("StudentForm")
        assert _control(form, "drop_layers").value == "1, 2"
        # a scratch teacher: its init and architecture have fields
        assert screen.query_one("#f-model-init").value == "scratch"
        assert screen.query_one("#scratch-fields").display
        assert screen.query_one("#f-model-arch-hidden-size").value == "64"
        assert screen.query_one("#f-model-tokenizer-train-vocab").value == "512"
        assert screen.query_one("#compose-path").value == str(src)
        await wait_for(pilot, lambda: screen.validation is not None and screen.validation.ok)
        assert screen.validation.students["d"].detail.startswith("2 layers")
        screen.query_one("#f-model-arch-num-hidden-layers").value = "x"  # the scratch fields are validated
        await wait_for(pilot, lambda: not screen.validation.ok and "arch" in screen.validation.message)
        screen.query_one("#f-model-arch-num-hidden-layers").value = "4"
        await wait_for(pilot, lambda: screen.validation.ok)
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: len(fake_engine()) == 1, what="launch")
        # then the new run is shown
        await wait_for(pilot, lambda: detail_drawn(app, runs / "tiny"), what="the new run")
    call = fake_engine()[0]
    assert call["argv"] == ["run", str(src), "--detach", "--runs-dir", str(runs)]
    assert call["sid"] == call["pid"] != os.getsid(0)
    assert load_experiment(src).finetune.steps == 7  # saved before launching, still valid
    assert src.read_text() == TINY  # nothing changed: the file is as it was, comments and layout


@run_async
async def test_compose_save_keeps_comments_and_key_order(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "experiments" / "tiny.toml"
    src.parent.mkdir()
    src.write_text(TINY)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ComposeScreen")
        screen = app.screen
        screen.load_file(src)
        await wait_for(pilot, lambda: screen.raw.get("name") == "tiny" and screen.form_ready.is_set(), what="loaded")
        screen.query_one("#f-finetune-steps").value = "9"
        screen.query_one("#add-depth").press()
        await wait_for(pilot, lambda: len(screen.raw["prune"]) == 2)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "steps = 9" in src.read_text(), what="saved")
    text = src.read_text()
    assert text.startswith("# a tiny scratch experiment (this comment must survive")
    assert "steps = 9  # few: a demo" in text
    assert text.index("[data]") < text.index("[finetune]") < text.index("[[prune]]") < text.index("[eval]")
    exp = load_experiment(src)
    assert exp.finetune.steps == 9 and [p.name for p in exp.prune] == ["d", "depth"]


def _burst(app, keys: list[str]) -> None:
    """Keys that arrive in one read (over SSH, a paste): all queued before the app handles any."""
    from textual import events

    for key in keys:
        app.post_message(events.Key(key, key if len(key) == 1 else None))


@run_async
async def test_compose_keys_esc_and_typing_bursts(runs, tmp_path, monkeypatch):
    """Screen keys do not type into fields once esc has left them; a burst with Backspace keeps its
    order (Textual applied the Backspace after the keys behind it)."""
    monkeypatch.chdir(tmp_path)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ComposeScreen")
        screen = app.screen
        await wait_for(pilot, screen.form_ready.is_set, what="the form")
        steps = screen.query_one("#f-finetune-steps")
        steps.focus()
        await pilot.press("ctrl+u")
        _burst(app, ["2", "backspace", "4", "0", "left", "backspace", "1", "end", "backspace", "backspace", "7"])
        await wait_for(pilot, lambda: steps.value == "7", what="the burst applied in order")
        _burst(app, ["backspace", *"123", "backspace", "4"])
        await wait_for(pilot, lambda: steps.value == "124", what="a second burst")
        assert screen.raw["finetune"]["steps"] == 124
        # a digit in a field types; esc leaves the field, then the digit switches screens
        await pilot.press("5")
        assert steps.value == "1245" and app.current_mode == "compose"
        await pilot.press("backspace", "escape")
        assert app.focused is None
        await pilot.press("1")
        await wait_for(pilot, lambda: app.current_mode == "runs", what="Runs")
        assert steps.value == "124"


@run_async
async def test_edit_copy_gets_a_fresh_name_and_n_starts_a_new_experiment(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    finished_run(runs, "base")
    finished_run(runs, "base-2")  # taken: the copy is named base-3
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: table.row_count == 2)
        table.move_cursor(row=table.get_row_index(str(runs / "base")))
        await pilot.press("e")
        await wait_for(pilot, lambda: app.current_mode == "compose" and app.screen.raw.get("name") == "base-3",
                       what="the copy")
        compose = app.screen
        assert compose.query_one("#f-name").value == "base-3"
        assert compose.query_one("#compose-path").value == str(tmp_path / "experiments" / "base-3.toml")
        await pilot.press("1")
        await wait_for(pilot, lambda: app.current_mode == "runs")
        await pilot.press("n")
        await wait_for(pilot, lambda: app.current_mode == "compose" and compose.raw.get("name") == "my-experiment",
                       what="a new experiment")
        # unsaved edits are not thrown away by n
        compose.query_one("#f-name").value = "mine"
        await wait_for(pilot, lambda: app.compose_dirty)
        await pilot.press("escape", "1")
        await wait_for(pilot, lambda: app.current_mode == "runs")
        await pilot.press("n")
        await wait_for(pilot, lambda: app.current_mode == "compose")
        await pilot.pause()
        assert compose.raw["name"] == "mine"


@run_async
async def test_compose_checks_a_hub_teacher_before_launching(runs, tmp_path, monkeypatch, fake_engine):
    """A new form needs no network (builtin data); a hub teacher must be in the local cache, or
    reachable on the hub when launching: otherwise the run would fail seconds after it started."""
    import app.data.compose as compose_data

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = []
    monkeypatch.setattr(compose_data, "hub_problem", lambda repo: asked.append(repo) or "is not on the hub")
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ComposeScreen")
        screen = app.screen
        notes = []
        monkeypatch.setattr(screen, "notify", lambda message, **kw: notes.append(message))
        await wait_for(pilot, screen.form_ready.is_set, what="the form")
        assert screen.raw["data"]["dataset"].startswith("builtin:")
        screen.query_one("#f-model-path").value = "nobody-xyz/none-such"
        await wait_for(pilot, lambda: "HF_HUB_OFFLINE" in screen.validation.message, what="offline: not cached")
        assert not screen.validation.ok and "model.path" in screen.validation.message
        monkeypatch.delenv("HF_HUB_OFFLINE")
        screen.query_one("#f-name").value = "hubby"
        await wait_for(pilot, lambda: screen.validation.ok, what="valid while the hub is not asked")
        assert "checked on the hub when you launch" in str(screen.query_one("#teacher-info").render())
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: any("cannot launch" in n for n in notes), what="the hub's answer")
        assert asked == ["nobody-xyz/none-such"] and fake_engine() == []
        assert "is not on the hub" in next(n for n in notes if "cannot launch" in n)
        monkeypatch.setattr(compose_data, "hub_problem", lambda repo: None)
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: len(fake_engine()) == 1, what="the launch")
        await wait_for(pilot, lambda: detail_drawn(app, runs / "hubby"), what="the new run")


@run_async
async def test_compose_refuses_to_launch_an_invalid_experiment(runs, tmp_path, monkeypatch, fake_engine):
    monkeypatch.chdir(tmp_path)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ComposeScreen")
        await wait_for(pilot, lambda: app.screen.validation is not None)
        assert app.compose_dirty is False  # nothing typed yet
        await pilot.press("ctrl+l")
        await pilot.pause(0.3)
        assert fake_engine() == []
        assert not (tmp_path / "experiments").exists()
        # unsaved edits: quitting asks first
        app.screen.query_one("#f-name").value = "edited"
        await wait_for(pilot, lambda: app.compose_dirty)
        app.screen.query_one("#save").focus()
        await pilot.press("q")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", what="quit confirmation")
        await pilot.press("n")
        await pilot.pause(0.1)
        assert app.is_running and type(app.screen).__name__ == "ComposeScreen"


# ---- Compare ------------------------------------------------------------------------------------


@run_async
async def test_compare_overlays_curves_results_and_config_diff(runs, tmp_path):
    a = finished_run(runs, "run-a", base_loss=3.0)
    b = finished_run(runs, "run-b", students=("depth",), base_loss=2.0)
    # run-b differs from run-a in one key of its depth student
    text = (b.root / "experiment.toml").read_text().replace("num_layers = 2", "num_layers = 3")
    (b.root / "experiment.toml").write_text(text)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.runs_loaded and len(app.runs) == 2)
        await pilot.press("3")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "CompareScreen")
        screen = app.screen
        chart = screen.query_one("#compare-chart")
        # the newest run with students is ticked: its pruned and distilled students
        await wait_for(pilot, lambda: len(chart.curves) == 2, what="preselected curves")
        assert {c.label for c in chart.curves} == {"run-b/prune-depth", "run-b/distill-depth"}
        results = screen.query_one("#results-table")
        assert results.row_count == 3  # teacher, prune-depth, distill-depth of run-b
        # pick stages from two runs: the two distilled depth students
        picks = screen.query_one("#compare-pick")
        picks.deselect_all()
        picks.select(f"{a.root}::distill-depth")
        picks.select(f"{b.root}::distill-depth")
        await wait_for(pilot, lambda: {c.label for c in chart.curves} == {"run-a/distill-depth", "run-b/distill-depth"})
        curve_a = next(c for c in chart.curves if c.label == "run-a/distill-depth")
        assert curve_a.xs == [5.0, 10.0, 15.0, 20.0]  # val points only
        assert results.row_count == 5 + 3
        diff = screen.query_one("#diff-table")
        keys = [diff.get_row_at(i)[0] for i in range(diff.row_count)]
        assert keys == ["prune.num_layers"]
        assert diff.get_row_at(0)[1:] == ["2", "3"]
        await pilot.press("d")
        assert screen.query_one("#compare-tabs").active == "diff"
        picks.highlighted = 0
        await pilot.press("o")  # open the highlighted stage's run
        await wait_for(pilot, lambda: type(app.screen).__name__ == "RunDetailScreen")
        opened = picks.stage_values[0].rpartition("::")[2]
        assert app.screen.stage_name == opened and app.screen.follow is False
        await wait_for(pilot, lambda: app.screen.query_one("#stage-list").highlighted_stage == opened)


@run_async
async def test_compare_follows_a_run_as_its_students_and_results_appear(runs, tmp_path):
    w = RunWriter(runs, "growing", students=("depth",))
    w.stage("prepare", "succeeded", total_steps=None)
    w.stage("finetune", "succeeded", step=20)
    w.stage("prune-depth", "succeeded", total_steps=None)
    w.metrics("prune-depth", range(0, 1), val_every=1)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.runs_loaded and len(app.runs) == 1)
        await pilot.press("3")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "CompareScreen")
        screen = app.screen
        picks = screen.query_one("#compare-pick")
        await wait_for(pilot, lambda: picks.selected == [f"{w.root}::prune-depth"], what="the student preselected")
        # its distill stage starts later: ticked too
        w.stage("distill-depth", "running", step=5)
        w.metrics("distill-depth", range(1, 6))
        await wait_for(pilot, lambda: f"{w.root}::distill-depth" in picks.selected, what="the new stage ticked")
        results = screen.query_one("#results-table")
        assert results.row_count == 0
        w.result("teacher", 1000, 3.0)
        await wait_for(pilot, lambda: results.row_count == 1, what="eval/results.json shown once written")
        # the first space ticks the highlighted stage
        picks.deselect_all()
        picks.focus()
        await pilot.press("space")
        assert len(picks.selected) == 1


# ---- GPUs, help, themes ---------------------------------------------------------------------------


class FakeProbe:
    def __init__(self):
        from app.data.gpus import GpuSample

        self.samples = [GpuSample(0, "NVIDIA H100 80GB HBM3", 87, 60 * 2**30, 80 * 2**30, 61, 512.0, ()),
                        GpuSample(1, "NVIDIA H100 80GB HBM3", 0, 1 * 2**30, 80 * 2**30, 30, 70.0, ())]

    def sample(self):
        return self.samples


@run_async
async def test_gpu_screen_shows_usage_and_owner(runs, tmp_path):
    w = RunWriter(runs, "on-gpu")
    w.stage("finetune", "running", step=1, gpus=(0,))
    app = make_app(runs, tmp_path, gpu_probe=FakeProbe())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.runs_loaded)
        await pilot.press("4")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "GpuScreen")
        table = app.screen.query_one("#gpu-table")
        await wait_for(pilot, lambda: table.row_count == 2)
        assert cell(table, "0", "owner") == "on-gpu/finetune"
        assert cell(table, "1", "owner") == "–"
        assert "87%" in cell(table, "0", "util")
        assert "60/80G" in cell(table, "0", "mem")
        await pilot.press("o")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "RunDetailScreen")
        assert app.screen.stage_name == "finetune"


@run_async
async def test_no_gpu_hides_the_gpu_screen_and_says_why(runs, tmp_path, monkeypatch):
    app = make_app(runs, tmp_path)  # gpu_probe=None: as on a machine without NVML
    app.no_gpu_reason = "NVML: NVMLError_LibraryNotFound: NVML Shared Library Not Found"
    notes = []
    monkeypatch.setattr(app, "notify", lambda message, **kw: notes.append(message))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        await wait_for(pilot, lambda: notes, what="the reason")
        assert notes == ["no NVIDIA GPU (NVML: NVMLError_LibraryNotFound: NVML Shared Library Not Found)"]
        assert app.current_mode == "runs"
        assert "GPUs" not in str(app.screen.query_one("#nav-tabs").render())


def test_nvml_probe_says_why_it_found_no_gpu(monkeypatch):
    import builtins

    from app.data.gpus import NvmlProbe

    real_import = builtins.__import__

    def no_pynvml(name, *a, **k):
        if name == "pynvml":
            raise ImportError("No module named 'pynvml'")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    assert NvmlProbe.open() is None
    assert NvmlProbe.why_not == "NVML: ImportError: No module named 'pynvml'"


def test_help_does_not_import_the_app():
    """No import cycle: app.main imports the screens, the help screen reads the running app's keys."""
    code = "import sys, app.screens.help; assert 'app.main' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


@run_async
async def test_help_lists_the_keys_of_every_screen(runs, tmp_path):
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HelpScreen")
        text = str(app.screen.query_one("#help-text").render())
        for title in ("Runs", "Run detail", "Compose", "Compare", "GPUs"):
            assert title in text
        for desc in ("Cancel run", "Resume", "Step/tokens", "Launch", "Config diff"):
            assert desc in text
        assert "● running" in text and "⊘ cancelled" in text and "○ pending" in text  # the symbols
        assert text.index("Runs  (this screen)") < text.index("Everywhere")
        await pilot.press("escape")
        assert type(app.screen).__name__ == "RunsScreen"
        await pilot.press("2")  # context: opened on Compose, Compose's keys come first
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ComposeScreen")
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HelpScreen")
        text = str(app.screen.query_one("#help-text").render())
        assert text.index("Compose  (this screen)") < text.index("Everywhere") < text.index("Run detail")


@run_async
async def test_light_and_dark_themes_use_theme_colours(runs, tmp_path):
    from app.widgets.style import state_style

    finished_run(runs, "r")
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.runs_loaded)
        dark = state_style(app, "succeeded")
        await pilot.press("ctrl+t")
        assert app.theme == "textual-light"
        light = state_style(app, "succeeded")
        assert dark != light and light == app.theme_variables["text-success"]
        table = app.screen.query_one("#runs-table")
        await pilot.pause(0.1)
        assert table.get_cell(str(runs / "r"), "state").style == light  # cells restyled on theme change
        for key in ("enter", "escape"):  # screens render in the light theme
            await pilot.press(key)
            await pilot.pause(0.1)


@run_async
async def test_theme_switch_restyles_screens_shown_later(runs, tmp_path, monkeypatch):
    """A screen shown again is not restyled as a whole when nothing changed (textual_workarounds.KeepStyles),
    but a theme switch on another screen restyles it when it is next shown."""
    from textual.screen import Screen

    finished_run(runs, "r")
    restyled = []  # screens Textual restyled as a whole (a spy on its full restyle)
    real = Screen.update_node_styles

    def spy(screen, *a, **k):
        restyled.append(screen)
        return real(screen, *a, **k)
    monkeypatch.setattr(Screen, "update_node_styles", spy)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.runs_loaded)
        await pilot.press("2")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ComposeScreen")
        compose = app.screen
        await wait_for(pilot, compose.form_ready.is_set, what="the form")
        assert restyled.count(compose) == 0  # styled as its widgets mounted: no restyle at the first show
        await pilot.pause(0.1)
        title = compose.query_one(".section-title")  # built after the first show, by _build_rest
        dark = (compose.query_one("NavBar").styles.background, title.styles.color, compose.styles.background)
        assert dark[0].hex == app.theme_variables["primary-muted"].upper()
        await pilot.press("1")
        await wait_for(pilot, lambda: app.current_mode == "runs")
        restyles = restyled.count(compose)
        await pilot.press("2")
        await wait_for(pilot, lambda: app.current_mode == "compose")
        await pilot.pause(0.1)
        assert restyled.count(compose) == restyles  # nothing changed: no full restyle on show

        await pilot.press("1")
        await wait_for(pilot, lambda: app.current_mode == "runs")
        await pilot.press("ctrl+t")  # on Runs: Compose is not in the current screen stack
        assert app.theme == "textual-light"
        await pilot.pause(0.1)
        await pilot.press("2")
        await wait_for(pilot, lambda: app.current_mode == "compose")
        await pilot.pause(0.1)
        assert restyled.count(compose) == restyles + 1
        light = (compose.query_one("NavBar").styles.background, title.styles.color, compose.styles.background)
        for before, after in zip(dark, light, strict=True):
            assert before != after
        assert light[0].hex == app.theme_variables["primary-muted"].upper()
        await pilot.press("1")  # and Runs, restyled in place by the theme switch, matches it too
        await wait_for(pilot, lambda: app.current_mode == "runs")
        await pilot.pause(0.1)
        assert app.screen.query_one("NavBar").styles.background.hex == app.theme_variables["primary-muted"].upper()


@run_async
async def test_screens_shown_without_a_restyle_are_styled_as_a_restyle_would(runs, tmp_path):
    """KeepStyles skips Textual's restyle when a screen is shown; every widget must still have the
    styles a full restyle gives it, on each screen, before and after a theme switch."""
    from textual.screen import Screen

    w = RunWriter(runs, "r")
    w.stage("finetune", "running", step=3)
    w.metrics("finetune", range(1, 4))

    def styles(screen) -> dict:
        return {w: (w.styles.css, w.rich_style) for w in screen.walk_children(with_self=True)}

    async def check(screen) -> None:
        await pilot.pause(0.1)
        kept = styles(screen)
        Screen.update_node_styles(screen)  # Textual's full restyle, bypassing KeepStyles
        await pilot.pause(0)
        assert styles(screen) == kept, type(screen).__name__

    app = make_app(runs, tmp_path, gpu_probe=FakeProbe())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.runs_loaded)
        for theme_round in range(2):
            for key, name in (("2", "ComposeScreen"), ("3", "CompareScreen"), ("4", "GpuScreen"),
                              ("1", "RunsScreen")):
                await pilot.press(key)
                await wait_for(pilot, lambda name=name: type(app.screen).__name__ == name)
                if name == "ComposeScreen":
                    await wait_for(pilot, app.screen.form_ready.is_set, what="the form")
                await check(app.screen)
            await pilot.press("enter")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "RunDetailScreen")
            await check(app.screen)
            await pilot.press("escape")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "RunsScreen")
            await check(app.screen)
            if theme_round == 0:
                await pilot.press("ctrl+t")


@run_async
async def test_runs_changed_while_another_screen_is_shown_show_on_return(runs, tmp_path):
    """The runs table is left as drawn while another screen is shown; back on Runs it catches up."""
    live = RunWriter(runs, "live")
    ft = live.stage("finetune", "running", step=2)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: table.row_count == 1, what="the run")
        assert cell(table, str(live.root), "state") == "● running"
        await pilot.press("3")
        await wait_for(pilot, lambda: app.current_mode == "compare")
        finished_run(runs, "new")  # a run appears and the live one fails while Compare is shown
        ft.finish("failed", "RuntimeError: boom")
        await wait_for(pilot, lambda: any(r.name == "new" for r in app.runs), what="the scan")
        await wait_for(pilot, lambda: next(r for r in app.runs if r.name == "live").state == "failed")
        await pilot.press("1")
        await wait_for(pilot, lambda: table.row_count == 2, what="the new run on Runs")
        await wait_for(pilot, lambda: cell(table, str(live.root), "state") == "✗ failed", what="the failed state")
        assert table.highlighted_key() == str(live.root)  # the cursor stays on its run
        await wait_for(pilot, lambda: "RuntimeError: boom" in str(app.screen.query_one("#preview-title").render()),
                       what="the error in the preview")


def _drawn(table) -> list[str]:
    return ["".join(seg.text for seg in table.render_line(y)) for y in range(table.size.height)]


def spy_redraws(table) -> tuple[list[int], list[tuple]]:
    """Spies on a table: the rows it refreshed one by one, and its `update_cell` calls (which
    re-render every visible row)."""
    rows, updates = [], []
    refresh_row, update_cell = table.refresh_row, table.update_cell
    table.refresh_row = lambda row_index: (rows.append(row_index), refresh_row(row_index))[1]
    table.update_cell = lambda *a, **k: (updates.append(a), update_cell(*a, **k))[1]
    return rows, updates


@run_async
async def test_a_changed_run_redraws_only_its_own_row(runs, tmp_path):
    """A running run's new numbers rewrite its row of the runs table and its stage's row below it,
    refreshing those rows only, and what is drawn is what a full redraw (a restyle) gives."""
    for i in range(4):
        finished_run(runs, f"done-{i}")
    live, ft = live_finetune_run(runs)  # the newest: top row, under the cursor, its stages below
    app = make_app(runs, tmp_path)
    scans = count_scans(app)
    async with app.run_test(size=(100, 30)) as pilot:
        table = app.screen.query_one("#runs-table")
        stages = app.screen.query_one("#stages-table")
        key = str(live.root)
        await wait_for(pilot, lambda: table.row_count == 5, what="five runs")
        assert table.highlighted_key() == key
        await scans_pass(app, pilot, scans)
        before = _drawn(table)
        table_rows, table_updates = spy_redraws(table)
        stage_rows, stage_updates = spy_redraws(stages)
        await scans_pass(app, pilot, scans)  # nothing changed: nothing redrawn
        assert table_rows == stage_rows == [] and _drawn(table) == before
        live.metrics("finetune", range(3, 11))
        ft.update(step=10)
        await wait_for(pilot, lambda: "50%" in cell(table, key, "progress"), what="the new progress")
        await wait_for(pilot, lambda: any("10/20" in line for line in _drawn(stages)), what="the stage's new step")
        await scans_pass(app, pilot, scans)
        after = _drawn(table)
        assert any("50%" in line for line in after) and after != before
        assert table_updates == stage_updates == []
        assert set(table_rows) == {table.get_row_index(key)}
        assert set(stage_rows) == {stages.get_row_index("finetune")}
        # and what is drawn equals a redraw from scratch: a theme switch there and back re-renders all
        drawn = {t: _drawn(t) for t in (table, stages)}
        for _ in range(2):
            await pilot.press("ctrl+t")
            await pilot.pause()
        assert app.theme == "textual-dark"
        for t in (table, stages):
            assert _drawn(t) == drawn[t]


@run_async
async def test_run_detail_draws_its_tabs_and_chart_after_the_first_frame(runs, tmp_path):
    """Run detail's first frame has the title, stage list and summary; the tabs come a frame later
    and the chart (a plotext figure) after them, built once per drawing, size and theme."""
    w = RunWriter(runs, "watch")
    ft = w.stage("finetune", "running", step=5)
    w.metrics("finetune", range(1, 6))
    app = make_app(runs, tmp_path)
    seen = []
    from app.screens.run_detail import RunDetailScreen

    show_tabs = RunDetailScreen._show_tabs

    def spy(screen):
        seen.append((screen.query_one("#detail-tabs").display, screen.query_one("#loss-chart").held,
                     screen.is_current))
        show_tabs(screen)

    RunDetailScreen._show_tabs = spy
    from textual_plotext import PlotextPlot

    built = []  # a spy on plotext's figure builds
    build = PlotextPlot.render
    PlotextPlot.render = lambda chart: (built.append(chart), build(chart))[1]
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_only_run(app, pilot)
            chart = screen.query_one("#loss-chart")
            await wait_for(pilot, lambda: seen and not chart.held and len(chart.curves[0].ys) == 5, what="the chart")
            assert seen == [(False, True, True)]  # the tabs were hidden and the chart held until then
            assert screen.query_one("#detail-tabs").display
            await pilot.pause(0.3)
            assert "train" in "".join(seg.text for y in range(chart.size.height) for seg in chart.render_line(y))
            builds = len(built)
            assert builds >= 1
            chart.refresh()  # nothing it draws changed: the figure is not built again
            await pilot.pause(0.2)
            assert len(built) == builds
            w.metrics("finetune", range(6, 11))  # new metrics: a new figure
            ft.update(step=10)
            await wait_for(pilot, lambda: len(chart.curves[0].ys) == 10, what="new metrics")
            await pilot.pause(0.2)
            assert len(built) > builds
            builds = len(built)
            await pilot.resize_terminal(100, 30)  # wider: the curves are thinned again, a new figure
            await wait_for(pilot, lambda: len(built) > builds, what="a figure for the new size")
    finally:
        RunDetailScreen._show_tabs = show_tabs
        PlotextPlot.render = build


@run_async
async def test_full_gc_passes_run_from_the_apps_own_timer(runs, tmp_path):
    """After start-up (frozen), Python's automatic full GC passes are off and the app runs them
    from a timer of its own; the threshold is restored when the app ends."""
    import gc

    from app.textual_workarounds import NO_AUTO_FULL_GC

    finished_run(runs, "done")
    before = gc.get_threshold()
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.gc_tuning.threshold is not None, timeout=30, what="the warm-up")
        assert gc.get_threshold() == (before[0], before[1], NO_AUTO_FULL_GC)
        collected = []
        real = gc.collect
        gc.collect = lambda *a: collected.append(a) or real(*a)
        try:
            app.gc_tuning.full_pass()
        finally:
            gc.collect = real
        assert collected == [()]
    assert gc.get_threshold() == before


@run_async
async def test_unchanged_texts_are_not_rewritten_every_scan(runs, tmp_path):
    """A running run's snapshot comes every scan; the preview title (and Run detail's title and
    summary) are only rewritten when they read differently (each rewrite re-lays out the screen)."""
    live = RunWriter(runs, "live")
    ft = live.stage("finetune", "running", step=2, total_steps=None)
    app = make_app(runs, tmp_path)
    scans = count_scans(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.query_one("#runs-table").row_count == 1)
        statics = [app.screen.query_one("#preview-title")]
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "RunDetailScreen", what="detail screen")
        await pilot.pause(0.3)
        statics += [app.screen.query_one("#detail-title"), app.screen.query_one("#stage-summary")]
        updates = []
        for s in statics:
            s.update = functools.partial(lambda real, s, *a, **k: (updates.append(s.id), real(*a, **k)), s.update, s)
        await scans_pass(app, pilot, scans, n=4)  # scans of an unchanged running run
        assert updates == []
        ft.update(step=7)  # it moves on: the summary says so
        await wait_for(pilot, lambda: "stage-summary" in updates, what="the summary rewritten")
        assert "step 7" in str(app.screen.query_one("#stage-summary").render())


# ---- warnings, the quality-vs-speed scatter, search tables -----------------------------------------


@run_async
async def test_a_divergence_warning_shows_on_runs_and_run_detail(runs, tmp_path):
    from engine.contract import append_metrics, now_iso, read_metrics, write_json
    from engine.contract.divergence import divergence

    w = finished_run(runs, "diverged")
    path = w.root / "distill-width" / "metrics.jsonl"
    append_metrics(path, {"step": 21, "tokens": 21 * 256, "split": "val", "loss": 45.4})
    warning = divergence(read_metrics(path)[0])
    assert warning
    stages = ["prepare", "finetune", "prune-depth", "prune-width", "distill-depth", "distill-width", "eval"]
    # the orchestrator's status.json, as it records a divergence (stages.<stage>.warning)
    write_json(w.root / "status.json", {
        "name": "diverged", "state": "succeeded", "pid": None, "started_at": now_iso(), "ended_at": now_iso(),
        "stages": {s: {"state": "succeeded", **({"warning": warning} if s == "distill-width" else {})}
                   for s in stages}})
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: app.runs_loaded and len(app.runs) == 1)
        run = app.runs[0]
        assert run.warnings == [("distill-width", warning)] and run.stage("distill-depth").warning is None
        title = app.screen.query_one("#preview-title")
        await wait_for(pilot, lambda: "⚠ distill-width: validation loss 45.4" in str(title.render()),
                       what="the warning in the Runs preview")
        screen = await open_only_run(app, pilot)
        await wait_for(pilot, lambda: "⚠ val loss rose: distill-width" in str(screen.query_one("#detail-title").render()),
                       what="the warning in Run detail's title")
        screen._select("distill-width")
        screen._show_summary()
        await wait_for(pilot, lambda: "⚠ validation loss 45.4" in str(screen.query_one("#stage-summary").render()),
                       what="the warning in the stage summary")


@run_async
async def test_compare_shows_quality_vs_speed_and_the_search_table(runs, tmp_path):
    from engine.contract import RunLayout, read_json, write_json

    prune = [{"name": "depth", "method": "depth", "num_layers": 2},
             {"name": "width", "method": "width", "ffn_hidden_size": 64},
             {"name": "auto", "method": "search", "target_params": 0.6}]
    w = RunWriter(runs, "decide", students=("depth", "width", "auto"), prune=prune)
    w.stage("prepare", "succeeded", total_steps=None)
    for s in ("depth", "width", "auto"):
        w.stage(f"prune-{s}", "succeeded", total_steps=None)
        w.stage(f"distill-{s}", "succeeded", step=20)
    w.stage("eval", "succeeded", total_steps=None)
    speeds = {"teacher": (100.0, 0.60), "distill-depth": (180.0, 0.45), "distill-width": (120.0, 0.50),
              "distill-auto": (150.0, 0.55)}
    for model, _ in speeds.items():
        w.result(model, 1000, 3.0)
    doc = read_json(RunLayout(w.root).results_file)
    for model, (tps, acc) in speeds.items():
        doc["models"][model]["tasks"] = {"lastword": {"acc": acc, "acc_stderr": 0.01}}
        doc["models"][model]["speed"] = {"device": "cpu", "decode_tokens_per_s": {"16": tps * 8, "1": tps}}
    write_json(RunLayout(w.root).results_file, doc)
    search = write_search_json(w)
    scored = [c for c in search["candidates"] if c["rank"] is not None]
    winner = next(c for c in scored if c["chosen"])
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: app.runs_loaded and len(app.runs) == 1)
        await pilot.press("3")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "CompareScreen")
        screen = app.screen
        chart = screen.query_one("#quality-speed")
        await wait_for(pilot, lambda: len(chart.points) == 4, what="the quality-vs-speed points")
        # x: decode tokens/s at the smallest batch (1, not 16); y: the mean task score; by method
        assert {(p[1], p[2], p[3]) for p in chart.points} == {
            ("teacher", 100.0, 0.60), ("depth", 180.0, 0.45), ("width", 120.0, 0.50), ("search", 150.0, 0.55)}
        assert chart.ylabel == "task score (mean)" and "batch 1 " in chart.xlabel
        await pilot.press("v")
        assert screen.query_one("#compare-tabs").active == "speed"
        await pilot.pause()
        assert "quality vs speed" in "".join(str(line) for line in chart.plt.build().splitlines())
        table = screen.query_one("#search-table")
        await wait_for(pilot, lambda: table.row_count == len(scored), what="the search table (scored candidates)")
        first = [getattr(c, "plain", str(c)) for c in table.get_row_at(0)]
        # the winner's mark beside the name, not in a last column off-screen
        assert first[:4] == ["auto", "★ winner", "1", str(winner["shape"]["num_layers"])]
        assert [getattr(c, "plain", str(c)) for c in table.get_row_at(1)][1] == ""
        assert "search auto" in str(screen.query_one("#search-title").render())
        await pilot.press("e")
        assert screen.query_one("#compare-tabs").active == "search"


@run_async
async def test_compare_names_a_damaged_results_json(runs, tmp_path):
    """Issue 25: a corrupt results.json made the results table lose its rows without a word."""
    w = finished_run(runs, "broken", students=("depth",))
    (w.root / "eval").mkdir(exist_ok=True)
    (w.root / "eval" / "results.json").write_text('{"models": {"teach')
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await wait_for(pilot, lambda: app.runs_loaded and len(app.runs) == 1)
        await pilot.press("3")
        await wait_for(pilot, lambda: any("results.json is damaged or empty" in str(n.message)
                                          for n in app._notifications), what="the damaged results.json named")
