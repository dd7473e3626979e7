"""Issue 24, "which student do I ship?" at a glance: quality vs speed's labels never hide a marker;
its speed figures say how they were measured (rounds, spread), and runs timed under different
loads get a warning; the "which student?" table says how far its tok/s figures spread."""

from __future__ import annotations

import pytest
from _app_util import RunWriter, make_app, quality_speed, run_async, show, wait_for

from app.widgets.compare.point_labels import place_labels
from app.widgets.compare.speed_note import RunSpeed, load_warning, spread_note
from engine.contract import RunLayout, read_json, write_json

MARKERS = "★●■◆"


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


def speed_run(runs, name: str, xs: dict[str, float], load: float = 0.2, cpus: int = 2) -> RunWriter:
    """A finished run (depth, width and search students) whose eval timed each model at xs[model]
    decode tokens/s, 12 rounds, spreads 3-9%, with the host's 1-minute load at `load`; every model
    scores 0.5 on the task, so all points share one row of the plot."""
    students = ("depth", "width", "auto")
    prune = [{"name": "depth", "method": "depth", "num_layers": 2},
             {"name": "width", "method": "width", "ffn_hidden_size": 64},
             {"name": "auto", "method": "search", "target_params": 0.6}]
    w = RunWriter(runs, name, students=students, prune=prune)
    w.stage("prepare", "succeeded", total_steps=None)
    for s in students:
        w.stage(f"prune-{s}", "succeeded", total_steps=None)
        w.metrics(f"prune-{s}", range(0, 1), loss0=6.0, val_every=1)
        w.stage(f"distill-{s}", "succeeded", step=20)
        w.metrics(f"distill-{s}", range(1, 21), loss0=4.0)
    w.stage("eval", "succeeded", total_steps=None)
    for model, params in (("teacher", 1000), *((f"distill-{s}", 500) for s in students)):
        w.result(model, params, 3.0)
    doc = read_json(RunLayout(w.root).results_file)
    for i, (model, tps) in enumerate(xs.items()):
        doc["models"][model]["tasks"] = {"lastword": {"acc": 0.5, "acc_stderr": 0.01}}
        doc["models"][model]["speed"] = {
            "device": "cpu", "decode_tokens_per_s": {"1": tps}, "repeats": 12,
            "spread": {"decode": {"1": (0.03, 0.05, 0.09, 0.04)[i]}},
            "load": {"max_1min": load, "cpus": cpus}, "under_load": load > cpus}
    write_json(RunLayout(w.root).results_file, doc)
    return w


def drawn(widget) -> list[str]:
    return ["".join(seg.text for seg in widget.render_line(y)) for y in range(widget.size.height)]


def test_labels_take_a_free_place_beside_their_point():
    """Three points one cell apart on one row: no label covers a marker or another label."""
    markers = [(10, 4), (11, 4), (12, 4), (30, 0)]
    labels = ["teacher", "depth", "auto (search)", "width"]
    spots = place_labels(markers, labels, width=60, height=9)
    spans = []
    for (_col, row), spot in zip(markers, spots, strict=True):
        assert spot is not None
        (c, r), text = spot
        cells = {(x, r) for x in range(c, c + len(text))}
        assert not cells & set(markers)
        assert not any(cells & other for other in spans)
        assert abs(r - row) <= 1 and 0 <= c and c + len(text) <= 60
        spans.append(cells)
    assert [text for _, text in spots] == labels  # all whole: there is room
    # no room anywhere: the label is cut short before the next marker, never drawn over it
    (spot, text), = place_labels([(0, 0)], ["teacher"], width=6, height=1)
    assert spot == (2, 0) and text == "tea…"


@run_async
async def test_quality_vs_speed_labels_never_hide_a_marker(runs, tmp_path):
    """Teacher and depth a few cells apart on one row: the teacher's label, drawn right of its point,
    was written over depth's marker."""
    speed_run(runs, "crowd", {"teacher": 100.0, "distill-depth": 104.0, "distill-width": 120.0,
                              "distill-auto": 150.0})
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await show(pilot, app, "3", "CompareScreen", runs=1)
        chart = await quality_speed(pilot, app, 4)
        text = "\n".join(drawn(chart))
        assert [text.count(m) for m in MARKERS] == [1, 1, 1, 1], text
        for label in ("teacher", "depth", "width"):
            assert label in text, text


def test_runs_timed_under_different_loads_or_devices_get_a_warning():
    calm, busy = RunSpeed("a", 12, 0.3, 2), RunSpeed("b", 12, 3.1, 2, under_load=True)
    assert load_warning([calm]) == ""
    assert load_warning([calm, RunSpeed("c", 8, 0.6, 2)]) == ""  # alike: within half a CPU
    assert load_warning([calm, busy]).startswith("⚠ runs timed under different loads (a 0.1, b 1.6 per CPU)")
    assert "different loads" in load_warning([calm, RunSpeed("d", 12, 1.9, 2)])  # neither above its CPUs
    assert "different devices" in load_warning([RunSpeed("a", device="cpu"), RunSpeed("b", device="cuda")])


@run_async
async def test_quality_vs_speed_says_how_speeds_were_timed_and_warns_across_loads(runs, tmp_path):
    xs = {"teacher": 100.0, "distill-depth": 180.0, "distill-width": 120.0, "distill-auto": 150.0}
    speed_run(runs, "calm", xs, load=0.2)
    speed_run(runs, "busy", xs, load=3.4)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await show(pilot, app, "3", "CompareScreen", runs=2)
        picks = screen.query_one("#compare-pick")
        await wait_for(pilot, lambda: picks.stage_values, what="the stages")
        picks.select_all()
        chart = await quality_speed(pilot, app, 8)
        text = " ".join(line.strip() for line in drawn(chart))
        assert "⚠ runs timed under different loads" in text  # first: the chart's one line of notes
        assert "decode tokens/s at batch 1" in text  # the x label is still drawn under the notes
        await pilot.press("m")  # full screen: room for every note
        await wait_for(pilot, lambda: chart.size.height > 15, what="the chart full screen")
        await pilot.pause()
        text = " ".join(line.strip() for line in drawn(chart))
        assert "busy: median of 12 rounds ±3-9%" in text and "calm: median of 12 rounds" in text
        await pilot.press("m")
        await pilot.press("w")
        title = str(screen.query_one("#which-title").render())
        assert "tok/s: decode, smallest batch, median of 12 rounds ±4-9%; *: loaded CPU" in title  # the students' spreads
        table = screen.query_one("#which-table")
        assert table.row_count == 8 and table.size.height >= 9  # header and both runs' rows still shown at 80x24


def test_the_which_tables_note_says_rounds_spread_and_load():
    class Row:
        def __init__(self, spread, loaded=False, repeats=None):
            self.decode_spread, self.under_load, self.repeats = spread, loaded, repeats

    assert spread_note([Row({"1": 0.031, "8": 0.5}), Row({"1": 0.09})]) == " ±3-9%"
    assert spread_note([Row({"1": 0.05}, loaded=True), Row({})]) == " ±5%; *: loaded CPU"
    assert spread_note([Row({})]) == ""
    assert spread_note([Row({"1": 0.05}, repeats=12), Row({"1": 0.09}, repeats=12)]) == ", median of 12 rounds ±5-9%"
    assert spread_note([Row({}, repeats=8), Row({}, repeats=12)]) == ", median of 8-12 rounds"


def test_compare_rows_carry_the_rounds_timed(runs):
    from engine.contract import read_model_rows

    w = speed_run(runs, "calm", {"teacher": 100.0, "distill-depth": 180.0})
    rows = {r.label: r for r in read_model_rows(w.root)}
    assert rows["teacher"].repeats == rows["depth"].repeats == 12 and rows["width"].repeats is None


def test_the_results_tabs_decode_column_says_spread_and_load(runs):
    from app.data.compare import decode_cell, results_rows

    calm = {r["model"]: r for r in results_rows(speed_run(runs, "calm", {"teacher": 100.0}).root)}
    busy = {r["model"]: r for r in results_rows(speed_run(runs, "busy", {"teacher": 12345.0}, load=3.4).root)}
    assert decode_cell(calm["teacher"]) == "100 ±3%" and decode_cell(busy["teacher"]) == "12.3k ±3%*"
    assert decode_cell(calm["distill-depth"]) == "–"  # not timed


def test_which_student_marks_a_task_mean_at_chance_and_stars_no_guess():
    from app.widgets.compare.which_student import WhichStudentTable, table_rows
    from engine.contract import ModelRow

    def row(label: str, score: float, chance: bool) -> ModelRow:
        return ModelRow(run="r", label=label, stage=f"distill-{label}", method="depth",
                        tasks={"stdlib_continue": score}, at_chance={"stdlib_continue"} if chance else set())

    def task_cells(rows: list[ModelRow]) -> list[str]:
        return [cells[4].plain for cells in table_rows(rows, {("r", "a"): "blue", ("r", "b"): "red"})]

    assert task_cells([row("a", 0.262, True), row("b", 0.33, False)]) == ["0.262°", "0.330★"]
    assert task_cells([row("a", 0.27, True), row("b", 0.26, True)]) == ["0.270°", "0.260°"]  # the best guess: no ★
    two = row("a", 0.3, True)
    two.tasks["other"] = 0.6  # one of its tasks scores above chance: the mean is not a guess
    assert task_cells([two, row("b", 0.2, False)]) == ["0.450★", "0.200"]
    assert WhichStudentTable.task_note([row("a", 0.262, True)]) == "; °: at chance"
    assert WhichStudentTable.task_note([two]) == ""
