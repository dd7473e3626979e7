"""Compare answers "which student?" at 80x24: its first view is one row per student (shape, x
smaller, loss pruned -> distilled, task score, decode speed, speedup), the best on each column
marked, in 80 columns; each student keeps one colour across that table, the loss chart and the
quality-vs-speed plot."""

from __future__ import annotations

import pytest
from _app_util import RunWriter, make_app, quality_speed, run_async, show, wait_for

from engine.contract import RunLayout, read_json, write_json


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


def decided_run(runs, under_load: tuple[str, ...] = ()):
    prune = [{"name": "depth", "method": "depth", "num_layers": 2},
             {"name": "width", "method": "width", "ffn_hidden_size": 64},
             {"name": "auto", "method": "search", "target_params": 0.6}]
    w = RunWriter(runs, "decide", students=("depth", "width", "auto"), prune=prune)
    w.stage("prepare", "succeeded", total_steps=None)
    for i, s in enumerate(("depth", "width", "auto")):
        w.stage(f"prune-{s}", "succeeded", total_steps=None)
        w.metrics(f"prune-{s}", range(0, 1), loss0=6.0 + i, val_every=1)
        w.stage(f"distill-{s}", "succeeded", step=20)
        w.metrics(f"distill-{s}", range(1, 21), loss0=4.0 + i)
    w.stage("eval", "succeeded", total_steps=None)
    # (params, val loss, decode tok/s, task acc, speedup)
    models = {"teacher": (1000, 3.0, 100.0, 0.60, None), "prune-depth": (500, 6.0, None, None, None),
              "prune-width": (600, 7.0, None, None, None), "prune-auto": (400, 8.0, None, None, None),
              "distill-depth": (500, 3.5, 180.0, 0.45, 1.8), "distill-width": (600, 3.4, 120.0, 0.50, 1.2),
              "distill-auto": (400, 3.6, 150.0, 0.55, 1.5)}
    for model, (params, loss, *_rest) in models.items():
        w.result(model, params, loss)
    doc = read_json(RunLayout(w.root).results_file)
    for model, (_p, _l, tps, acc, up) in models.items():
        if tps is not None:
            doc["models"][model]["tasks"] = {"lastword": {"acc": acc, "acc_stderr": 0.01}}
            doc["models"][model]["speed"] = {"device": "cpu", "decode_tokens_per_s": {"1": tps},
                                             **({"speedup_vs_teacher": up} if up else {}),
                                             "under_load": model in under_load}
    write_json(RunLayout(w.root).results_file, doc)
    return w


def plain(cells) -> list[str]:
    return [getattr(c, "plain", str(c)) for c in cells]


@run_async
async def test_compare_opens_on_which_student_in_80_columns(runs, tmp_path):
    decided_run(runs)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await show(pilot, app, "3", "CompareScreen", runs=1)
        table = screen.query_one("#which-table")
        await wait_for(pilot, lambda: table.row_count == 4, what="teacher + 3 students")
        await pilot.pause()
        assert screen.query_one("#compare-which").display and not screen.query_one("#compare-body").display
        rows = {plain(table.get_row_at(i))[0]: plain(table.get_row_at(i)) for i in range(4)}
        assert list(rows) == ["teacher", "depth", "width", "auto"]
        # student, shape, x smaller, loss pruned -> distilled, task, tok/s, speedup; ★ = best student
        assert rows["depth"][2:] == ["2.0x", "6.000→3.500", "0.450", "180★", "1.80x★"]
        assert rows["width"][3] == "7.000→3.400★" and rows["auto"][2] == "2.5x★" and rows["auto"][4] == "0.550★"
        assert "★" not in "".join(rows["teacher"])  # the teacher is the reference, not a candidate
        # the whole table fits: no column cut, nothing to scroll sideways
        assert table.virtual_size.width <= 80 and table.region.right <= 80
        for col in table.ordered_columns:
            cells = [plain(table.get_row_at(i))[table.ordered_columns.index(col)] for i in range(4)]
            assert max(len(c) for c in cells) <= col.width, (col.label, cells)

        # one colour per student: its name in the table, both its curves, its quality-vs-speed point
        await pilot.press("w")
        assert screen.query_one("#compare-body").display and not screen.query_one("#compare-which").display
        chart = screen.query_one("#compare-chart")
        await wait_for(pilot, lambda: len(chart.curves) == 6, what="the students' curves")
        by_label = {c.label.rpartition("/")[2]: c.color for c in chart.curves}
        colours = {s: by_label[f"distill-{s}"] for s in ("depth", "width", "auto")}
        assert len(set(colours.values())) == 3
        # its pruned reference line: the same hue, dimmed (halfway to the plot's background)
        from textual.color import Color

        from app.widgets.compare.which_student import dimmed
        surface = Color.parse(app.theme_variables["surface"]).rgb
        assert all(by_label[f"prune-{s}"] == dimmed(colours[s], surface) for s in colours)
        names = {plain([table.get_row_at(i)[0]])[0]: table.get_row_at(i)[0].style for i in range(4)}
        from app.widgets.compare.which_student import _rich

        assert all(_rich(colours[s]) in str(names[s]) for s in colours)
        speed = screen.query_one("#quality-speed")
        await wait_for(pilot, lambda: len(speed.points) == 4, what="the quality-vs-speed points")
        assert [speed.colours[label] for label in ("depth", "width", "auto (search)")] == list(colours.values())
        await pilot.press("w")
        assert screen.query_one("#compare-which").display


@run_async
async def test_ctrl_e_exports_the_highlighted_student(runs, tmp_path, monkeypatch):
    """From the "which student?" table: ctrl+e asks where (exported/RUN-STUDENT), then runs
    `slimlab-engine export RUN STUDENT DIR`; the teacher row is not a student to export."""
    import json
    import sys
    from pathlib import Path

    calls = tmp_path / "engine_calls.jsonl"
    monkeypatch.setenv("SLIMLAB_ENGINE", f"{sys.executable} {Path(__file__).with_name('_app_fake_engine.py')}")
    monkeypatch.setenv("SLIMLAB_FAKE_ENGINE_OUT", str(calls))
    w = decided_run(runs)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await show(pilot, app, "3", "CompareScreen", runs=1)
        table = app.screen.query_one("#which-table")
        await wait_for(pilot, lambda: table.row_count == 4, what="teacher + 3 students")
        await pilot.press("ctrl+e")  # the cursor is on the teacher
        assert type(app.screen).__name__ == "CompareScreen"
        await pilot.press("j", "j", "ctrl+e")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PromptScreen", what="where to")
        assert app.screen.query_one("#prompt-answer").value == "exported/decide-width"
        await pilot.press("enter")
        await wait_for(pilot, lambda: calls.exists() and calls.read_text().endswith("\n"), what="the engine called")
        argv = json.loads(calls.read_text().splitlines()[0])["argv"]
        assert argv == ["export", str(w.root), "width", "exported/decide-width"]


@run_async
async def test_quality_vs_speed_names_its_x_axis_and_draws_labels_on_its_own_background(runs, tmp_path):
    """At 80 columns the x axis is labelled (with its unit; plotext dropped it beside the y label),
    the point labels are not white boxes in the dark theme, and the x axis does not start below 0."""
    decided_run(runs)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await show(pilot, app, "3", "CompareScreen", runs=1)
        chart = await quality_speed(pilot, app, 4)
        lines = [chart.render_line(y) for y in range(chart.size.height)]
        text = ["".join(seg.text for seg in line) for line in lines]
        assert any("decode tokens/s" in t for t in text)
        frame = next(seg.style.bgcolor for line in lines for seg in line if "┌" in seg.text)
        labels = [seg for line in lines for seg in line if seg.text.strip().rstrip(" ").endswith(("teacher", "depth"))]
        assert labels and all(seg.style.bgcolor == frame for seg in labels)
        ticks = text[next(i for i, t in enumerate(text) if "└" in t) + 1].split()
        assert all(float(t) >= 0 for t in ticks)


@run_async
async def test_ctrl_e_in_run_detail_exports_the_selected_students(runs, tmp_path, monkeypatch):
    import json
    import sys
    from pathlib import Path

    calls = tmp_path / "engine_calls.jsonl"
    monkeypatch.setenv("SLIMLAB_ENGINE", f"{sys.executable} {Path(__file__).with_name('_app_fake_engine.py')}")
    monkeypatch.setenv("SLIMLAB_FAKE_ENGINE_OUT", str(calls))
    w = decided_run(runs)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: table.row_count == 1)
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "RunDetailScreen")
        screen = app.screen
        stages = screen.query_one("#stage-list")
        await wait_for(pilot, lambda: "distill-auto" in stages._names, what="the stages")
        stages.highlighted = stages._names.index("distill-auto")
        await wait_for(pilot, lambda: screen.stage_name == "distill-auto")
        await pilot.press("ctrl+e")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PromptScreen", what="where to")
        await pilot.press("enter")
        await wait_for(pilot, lambda: calls.exists() and calls.read_text().endswith("\n"), what="the engine called")
        assert json.loads(calls.read_text().splitlines()[0])["argv"] == ["export", str(w.root), "auto",
                                                                          "exported/decide-auto"]


@run_async
async def test_a_model_timed_under_load_says_so_in_quality_vs_speed(runs, tmp_path):
    decided_run(runs, under_load=("distill-width",))
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await show(pilot, app, "3", "CompareScreen", runs=1)
        chart = app.screen.query_one("#quality-speed")
        await wait_for(pilot, lambda: len(chart.points) == 4, what="the points")
        assert {p[0] for p in chart.points} == {"teacher", "depth", "width*", "auto (search)"}
        assert "* timed under load" in chart.xlabel and chart.colours["width*"] == chart.colours["width"]
