"""Compare (issue 15): a config diff of the effective configs, and a loss-chart key that leaves the
plot area to the curves at 80 columns."""

from __future__ import annotations

import pytest
from _app_util import experiment_dict, finished_run, make_app, run_async, wait_for
from plotext._utility import get_color_code

from app.data.compare import NOT_USED, config_diff, stage_config, stage_sections
from app.widgets.loss_chart import Curve, key_lines
from engine.config import dumps_toml


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


async def open_compare(app, pilot, n_runs: int):
    await wait_for(pilot, lambda: app.runs_loaded and len(app.runs) == n_runs, what="the runs")
    await pilot.press("3")
    await wait_for(pilot, lambda: type(app.screen).__name__ == "CompareScreen", what="Compare")
    return app.screen


def _lines(widget) -> list[str]:
    return ["".join(seg.text for seg in widget.render_line(y)) for y in range(widget.size.height)]


# ---- config diff ---------------------------------------------------------------------------------


def _written_at_defaults(exp: dict) -> dict:
    """`exp` with keys the schema defaults written out, at their default values."""
    exp["model"]["dtype"] = "bfloat16"
    exp["data"]["seed"] = 1234
    exp["finetune"]["warmup_steps"] = 2
    exp["prune"][0]["importance"] = "activation"
    exp["distill"].update(temperature=1.0, loss="forward_kl")
    exp["launch"] = {"strategy": "ddp", "gpus": "all"}
    return exp


@run_async
async def test_config_diff_shows_only_real_differences_prune_first(runs, tmp_path):
    """Two runs differing in 2 keys, one of them with 7 more keys written at their defaults: the
    diff of their distilled depth students has exactly the 2 rows, prune.* first."""
    finished_run(runs, "run-a", students=("depth",))
    b = finished_run(runs, "run-b", students=("depth",))
    exp = _written_at_defaults(experiment_dict("run-b", ("depth",), runs_dir=str(runs)))
    exp["data"]["seq_length"] = 128
    exp["prune"][0]["num_layers"] = 3
    (b.root / "experiment.toml").write_text(dumps_toml(exp))
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_compare(app, pilot, 2)
        picks = screen.query_one("#compare-pick")
        picks.deselect_all()
        picks.select(f"{runs / 'run-a'}::distill-depth")
        picks.select(f"{b.root}::distill-depth")
        diff = screen.query_one("#diff-table")
        await wait_for(pilot, lambda: len(screen.query_one("#compare-chart").curves) == 2 and diff.row_count,
                       what="the diff of the two students")
        rows = [diff.get_row_at(i) for i in range(diff.row_count)]
        assert rows == [["prune.num_layers", "2", "3"], ["data.seq_length", "64", "128"]]


def test_a_stage_is_not_compared_on_a_section_it_does_not_use():
    """A prune stage has no distill.*: against a distill stage that is no difference, yet a real
    distill.* difference between two distill stages shows, with the prune stage's cell n/a."""
    a, b = experiment_dict("a"), experiment_dict("b")
    b["distill"]["lr"] = 2e-4
    stages = {"a/prune": (a, "prune-depth"), "a/distill": (a, "distill-depth"), "b/distill": (b, "distill-depth")}
    configs = {label: stage_config(raw, stage) for label, (raw, stage) in stages.items()}
    sections = {label: stage_sections(stage) for label, (_, stage) in stages.items()}
    assert config_diff(configs, sections) == [("distill.lr", [NOT_USED, 1e-4, 2e-4])]
    del configs["b/distill"], sections["b/distill"]
    assert config_diff(configs, sections) == []


def test_a_students_distill_overrides_are_diffed_as_distill_keys():
    exp = experiment_dict("a")
    exp["prune"][1]["distill"] = {"loss": "ce"}
    configs = {s: stage_config(exp, s) for s in ("distill-depth", "distill-width")}
    rows = dict(config_diff(configs))
    assert rows["distill.loss"] == ["forward_kl", "ce"]
    assert not any(key.startswith("prune.distill") for key in rows)


# ---- the loss chart's key -------------------------------------------------------------------------


@run_async
async def test_chart_key_sits_above_the_plot_at_80_columns(runs, tmp_path):
    """At 80x24 the four preselected curves are named on the key rows above the figure, each in its
    curve's colour, and no label is drawn inside the plot area (plotext's legend is off)."""
    finished_run(runs, "run-b")
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_compare(app, pilot, 1)
        await pilot.press("w")  # from the "which student?" table to the curves
        chart = screen.query_one("#compare-chart")
        await wait_for(pilot, lambda: len(chart.curves) == 4 and len(_lines(chart)) > 5, what="the four curves")
        lines = _lines(chart)
        top = next(i for i, line in enumerate(lines) if "┌" in line)  # the figure's frame
        key, figure = "\n".join(lines[:top]), "\n".join(lines[top:])
        assert 1 <= top <= 2 and key.startswith("run-b:")
        stages = [c.label.partition("/")[2] for c in chart.curves]
        assert sorted(stages) == ["distill-depth", "distill-width", "prune-depth", "prune-width"]
        for stage in stages:
            assert stage in key and stage not in figure
        assert chart.size.height - top >= 8  # the plot keeps the rest


def test_key_lines_pack_colour_and_fold():
    curves = [Curve(f"run/student-{i}", [1.0, 2.0], [3.0, 2.0], color) for i, color in enumerate(("blue", "red", "green"))]
    one = key_lines(curves, width=80, max_rows=3)
    assert [line.plain for line in one] == ["run:  ━ student-0  ━ student-1  ━ student-2"]
    for curve in curves:  # each entry in the colour plotext draws its curve in
        at = one[0].plain.index(curve.label.partition("/")[2]) - 2
        assert [s.style.color.number for s in one[0].spans if s.start == at] == [get_color_code(curve.color)]
    two = key_lines(curves, width=25, max_rows=3)
    assert [line.plain for line in two] == ["run:  ━ student-0", "━ student-1  ━ student-2"]
    assert all(line.cell_len <= 25 for line in two)
    folded = key_lines(curves, width=25, max_rows=1)
    assert [line.plain for line in folded] == ["run:  ━ student-0  +2"]
