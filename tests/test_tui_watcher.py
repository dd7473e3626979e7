"""The TUI's one file watcher (issue 22, part 4): the stat bookkeeping (app.data.watcher) driven by
explicit `poll(now)` calls on real files (no sleeping, no clock), and Pilot tests that a screen hears
its run's files change, and a screen not shown hears nothing until it is shown again."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from _app_util import RunWriter, finished_run, make_app, run_async, wait_for

from app.data.watcher import Change, DrainQueue, Watch, Watcher


def news(w: Watcher, now: float = 0.0) -> dict:
    return {owner: [(c.path.name, c.kind) for c in changes] for owner, changes in w.poll(now).items()}


def write(path: Path, text: str, append: bool = False) -> None:
    with open(path, "a" if append else "w") as f:
        f.write(text)


# ---- the stat bookkeeping ----------------------------------------------------------------------


def test_a_new_subscriber_hears_existing_files_then_only_what_moves(tmp_path):
    log, status, metrics = tmp_path / "stdout.log", tmp_path / "status.json", tmp_path / "metrics.jsonl"
    write(log, "a\n")
    write(status, "{}")
    w = Watcher()
    w.watch("detail", Watch.of([log, status, metrics]))
    assert news(w) == {"detail": [("status.json", "created"), ("stdout.log", "created")]}  # metrics: not there
    assert news(w, 1) == {}

    write(log, "b\n", append=True)  # an append
    tmp = tmp_path / "status.tmp"
    write(tmp, '{"state": "running"}')
    os.replace(tmp, status)  # an atomic replace
    write(metrics, '{"step": 1}\n')  # a file that appears
    assert news(w, 2) == {"detail": [("metrics.jsonl", "created"), ("status.json", "modified"),
                                     ("stdout.log", "modified")]}
    log.unlink()
    assert news(w, 3) == {"detail": [("stdout.log", "deleted")]}
    assert news(w, 4) == {}
    write(log, "again\n")
    assert news(w, 5) == {"detail": [("stdout.log", "created")]}


def test_same_size_rewrite_is_seen_by_its_mtime(tmp_path):
    f = tmp_path / "status.json"
    write(f, "{}")
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    w = Watcher()
    w.watch("s", Watch.of([f]))
    w.poll(0)
    write(f, "[]")
    os.utime(f, ns=(2_000_000_000, 2_000_000_000))  # same inode and size: only the mtime says it
    assert news(w, 1) == {"s": [("status.json", "modified")]}


def test_subscribers_sharing_a_file_each_hear_once(tmp_path):
    f = tmp_path / "metrics.jsonl"
    write(f, "1\n")
    w = Watcher()
    w.watch("a", Watch.of([f]))
    assert news(w) == {"a": [("metrics.jsonl", "created")]}
    w.watch("b", Watch.of([f]))  # subscribes later: the file is news to it, not to "a"
    assert news(w, 1) == {"b": [("metrics.jsonl", "created")]}
    write(f, "2\n", append=True)
    assert news(w, 2) == {"a": [("metrics.jsonl", "modified")], "b": [("metrics.jsonl", "modified")]}
    w.unwatch("a")
    write(f, "3\n", append=True)
    assert news(w, 3) == {"b": [("metrics.jsonl", "modified")]}


def test_a_paused_subscriber_costs_no_stat_and_hears_the_net_change_on_resume(tmp_path, monkeypatch):
    import app.data.watcher as watcher

    f, g = tmp_path / "stdout.log", tmp_path / "status.json"
    write(f, "1\n")
    write(g, "{}")
    w = Watcher()
    w.watch("detail", Watch.of([f, g]))
    w.poll(0)
    w.pause("detail")
    stats: list[Path] = []
    real = watcher.file_key
    monkeypatch.setattr(watcher, "file_key", lambda p: stats.append(p) or real(p))
    write(f, "2\n", append=True)
    assert news(w, 1) == {} and stats == []
    assert w.next_due() is None  # nothing active: the service sleeps until poked
    w.hurry()  # (a poke) does not wake a paused one
    assert news(w, 1.5) == {} and stats == []
    write(f, "3\n", append=True)
    w.resume("detail")
    assert news(w, 2) == {"detail": [("stdout.log", "modified")]}  # once, for both appends; g untouched


def test_each_subscription_is_looked_at_its_own_interval(tmp_path):
    f = tmp_path / "metrics.jsonl"
    write(f, "1\n")
    w = Watcher()
    w.watch("compare", Watch.of([], interval=2.0))
    assert w.next_due() is None  # nothing ticked yet: no wake-ups for it
    w.watch("detail", Watch.of([f], interval=0.25))
    w.watch("compare", Watch.of([f], interval=2.0))
    assert set(news(w, 10.0)) == {"detail", "compare"}
    assert w.next_due() == 10.25
    write(f, "2\n", append=True)
    assert news(w, 10.25) == {"detail": [("metrics.jsonl", "modified")]}  # compare is not due yet
    assert news(w, 12.0) == {"compare": [("metrics.jsonl", "modified")]}


def test_changing_the_watched_set_keeps_what_was_heard(tmp_path):
    config, a_log, b_log = tmp_path / "experiment.toml", tmp_path / "a.log", tmp_path / "b.log"
    for p in (config, a_log, b_log):
        write(p, "x\n")
    w = Watcher()
    assert w.watch("detail", Watch.of([config, a_log])) is True
    w.poll(0)
    assert w.watch("detail", Watch.of([config, a_log])) is False  # the same: no news, no poke
    w.watch("detail", Watch.of([config, b_log]))  # another stage picked
    assert news(w, 0.1) == {"detail": [("b.log", "created")]}  # the config is not told again
    w.watch("detail", Watch.of([config, a_log]))  # back: a's log is news again (its reader starts over)
    assert news(w, 0.2) == {"detail": [("a.log", "created")]}


def test_a_run_directory_removed_while_watched(tmp_path):
    run = tmp_path / "runs" / "r"
    (run / "finetune").mkdir(parents=True)
    files = [run / "experiment.toml", run / "finetune" / "stdout.log", run / "finetune" / "status.json"]
    for p in files:
        write(p, "x\n")
    w = Watcher()
    w.watch("detail", Watch.of(files))
    w.poll(0)
    shutil.rmtree(run)
    assert sorted(news(w, 1)["detail"]) == [("experiment.toml", "deleted"), ("status.json", "deleted"),
                                            ("stdout.log", "deleted")]
    assert news(w, 2) == {}
    (run / "finetune").mkdir(parents=True)  # run again under the same name
    write(run / "finetune" / "stdout.log", "new\n")
    assert news(w, 3) == {"detail": [("stdout.log", "created")]}


def test_changes_name_their_path():
    assert Change(Path("/r/x"), "created").path == Path("/r/x")


def test_the_drain_queue_runs_one_reader_at_a_time_and_coalesces():
    q = DrainQueue()
    assert q.add({Path("a")}) is True  # start a reader
    assert q.add({Path("b")}) is False  # one is draining: it takes this too
    assert q.take() == {Path("a"), Path("b")}
    assert q.add() is False  # just "read again" (new ticks), while still draining
    assert q.take() == set()
    assert q.take() is None  # drained: the reader ends
    assert q.add({Path("c")}) is True
    q.reset()  # that reader was cancelled before it drained
    assert q.add() is True


# ---- the screens ---------------------------------------------------------------------------------


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


async def open_detail(app, pilot):
    await wait_for(pilot, lambda: app.screen.query_one("#runs-table").row_count >= 1, what="the run")
    await pilot.press("enter")
    await wait_for(pilot, lambda: type(app.screen).__name__ == "RunDetailScreen", what="detail screen")
    return app.screen


def spy_files_changed(monkeypatch, screen_cls) -> list:
    """Every FilesChanged a screen of `screen_cls` handles."""
    heard: list = []
    real = screen_cls.on_files_changed

    def spy(self, message):
        heard.append(message)
        real(self, message)
    monkeypatch.setattr(screen_cls, "on_files_changed", spy)
    return heard


@run_async
async def test_run_detail_hears_its_stage_files_and_nothing_while_hidden(runs, tmp_path, monkeypatch):
    from app.screens.run_detail import RunDetailScreen

    w = RunWriter(runs, "live")
    w.stage("prepare", "succeeded", total_steps=None)
    ft = w.stage("finetune", "running", step=2)
    w.log("finetune", ["boot"])
    heard = spy_files_changed(monkeypatch, RunDetailScreen)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_detail(app, pilot)
        log = screen.query_one("#log-view")
        await wait_for(pilot, lambda: list(log.lines) == ["boot"], what="the log so far")
        w.log("finetune", ["step 3"])
        ft.update(step=3)
        app.files.poke()
        await wait_for(pilot, lambda: list(log.lines) == ["boot", "step 3"], what="the new line")
        await wait_for(pilot, lambda: re.search(r"^step +3$", str(screen.query_one("#status-text").render()), re.M),
                       what="the status file's update")

        await pilot.press("2")  # Compose: Run detail is hidden (suspended) now
        await wait_for(pilot, lambda: app.current_mode == "compose", what="compose")
        heard.clear()
        w.log("finetune", ["while away"])
        assert app.files.poll(float("inf")) == 0  # nobody to tell: the hidden detail is paused
        await pilot.pause()
        assert heard == [] and list(log.lines) == ["boot", "step 3"]

        await pilot.press("1")  # back: it hears what changed meanwhile, once
        await wait_for(pilot, lambda: list(log.lines) == ["boot", "step 3", "while away"], what="catch-up")
        assert [c.path.name for m in heard for c in m.changes] == ["stdout.log"]


@run_async
async def test_run_detail_survives_its_run_directory_being_removed(runs, tmp_path):
    w = RunWriter(runs, "gone")
    w.stage("prepare", "succeeded", total_steps=None)
    w.stage("finetune", "running", step=2)
    w.log("finetune", ["boot"])
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_detail(app, pilot)
        await wait_for(pilot, lambda: list(screen.query_one("#log-view").lines) == ["boot"], what="the log")
        await wait_for(pilot, lambda: "finetune" in str(screen.query_one("#status-text").render()), what="status")
        shutil.rmtree(w.root)
        app.rescan()
        await wait_for(pilot, lambda: "not found" in str(screen.query_one("#detail-title").render()), what="gone")
        await wait_for(pilot, lambda: "no status.json yet" in str(screen.query_one("#status-text").render()),
                       what="the status file's deletion heard")
        assert app.screen is screen  # still open, nothing raised


@run_async
async def test_compare_hears_a_results_file_appear(runs, tmp_path, monkeypatch):
    from app.screens.compare import CompareScreen

    w = finished_run(runs, "done")
    os.unlink(w.root / "eval" / "results.json")  # the eval stage has not written it yet
    heard = spy_files_changed(monkeypatch, CompareScreen)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.runs_loaded and app.runs, what="the run")
        await pilot.press("3")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "CompareScreen", what="compare")
        screen = app.screen
        table = screen.query_one("#results-table")
        await wait_for(pilot, lambda: screen.selected, what="the run's students ticked")
        await wait_for(pilot, lambda: "no eval/results.json" in str(table.columns[next(iter(table.columns))].label),
                       what="no results yet")
        w.result("teacher", 1000, 3.0)
        w.result("distill-depth", 500, 3.5)
        app.files.poke()
        await wait_for(pilot, lambda: table.row_count == 2, what="the results that appeared")
        assert any(c.path.name == "results.json" and c.kind == "created" for m in heard for c in m.changes)
