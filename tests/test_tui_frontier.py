"""Issue 23 section 4: Compare's Frontier tab (f) plots a search's Pareto frontier, quality against
params, the chosen candidate ★ and the run's hand-made depth and width students beside it; a
search.json written before the frontier existed still shows one (worked out from its candidates)."""

from __future__ import annotations

import pytest
from _app_util import make_app, run_async, wait_for
from test_search_frontier import searched_run

from engine.contract import RunLayout, read_json, write_json

HAND_MADE = {"prune-depth": (400_000, 7.5), "prune-width": (530_000, 6.2)}  # (params, loss after pruning)


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


def frontier_run(runs):
    w, doc = searched_run(runs)
    w.stage("prepare", "succeeded", total_steps=None)
    for s in ("depth", "width", "auto"):
        w.stage(f"prune-{s}", "succeeded", total_steps=None)
    for model, (params, loss) in HAND_MADE.items():
        w.result(model, params, loss)
    return w, doc


def chart_text(chart) -> str:
    return "\n".join("".join(seg.text for seg in chart.render_line(y)) for y in range(chart.size.height))


async def open_frontier(app, pilot):
    await wait_for(pilot, lambda: app.runs_loaded and len(app.runs) == 1)
    await pilot.press("3")
    await wait_for(pilot, lambda: type(app.screen).__name__ == "CompareScreen")
    await pilot.press("f")
    assert app.screen.query_one("#compare-tabs").active == "frontier"
    await pilot.press("m")  # the tabs over the whole screen: room for the plot at 80x24
    chart = app.screen.query_one("#search-frontier")
    await wait_for(pilot, lambda: chart.plots and chart.size.height > 10, what="the frontier")
    await pilot.pause()
    return chart


@run_async
async def test_compare_plots_the_frontier_with_the_chosen_point_and_the_hand_made_students(runs, tmp_path):
    _, doc = frontier_run(runs)
    cands, f = doc["candidates"], doc["frontier"]
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        chart = await open_frontier(app, pilot)
        [plot] = chart.plots
        assert plot.frontier == [(cands[i]["params"], cands[i]["score"]) for i in f["points"]]
        assert len(plot.scored) == f["measured"] > len(plot.frontier)  # the dominated ones drawn too
        assert plot.chosen == (cands[f["chosen"]]["params"], cands[f["chosen"]]["score"]) and plot.chosen_on_frontier
        assert plot.hand_made == [("depth", "depth", 400_000.0, 7.5), ("width", "width", 530_000.0, 6.2)]
        text = chart_text(chart)
        assert "frontier: loss vs params (lower is better)" in text and "params (K) · ★ chosen" in text
        assert "hand-made n/a" not in text
        assert "★" in text and "auto" in text and "depth" in text and "width" in text


@run_async
async def test_an_older_search_json_without_a_frontier_still_plots_one(runs, tmp_path):
    """Scored by a short distillation: the hand-made students' loss after pruning is not that
    measure, so they are not marked, and the title says why."""
    w, doc = frontier_run(runs)
    path = RunLayout(w.root).search_file("prune-auto")
    old = read_json(path)
    del old["frontier"]
    write_json(path, {**old, "score": "distill"})
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        chart = await open_frontier(app, pilot)
        [plot] = chart.plots
        cands = doc["candidates"]
        assert plot.frontier == [(cands[i]["params"], cands[i]["score"]) for i in doc["frontier"]["points"]]
        assert plot.hand_made == [] and "not the loss after pruning" in plot.note
        text = chart_text(chart)
        assert "frontier: distill vs params" in text and "hand-made n/a" in text
