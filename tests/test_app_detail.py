"""Pilot tests of Runs and Run detail (issue 15): clicks on the stage list, the stage preview's
height, the search table of a search student."""

from __future__ import annotations

import pytest
from _app_util import finished_run, make_app, run_async, wait_for, write_search_json
from textual import events

SEVEN = ["prepare", "finetune", "prune-depth", "prune-width", "distill-depth", "distill-width", "eval"]


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


async def open_only_run(app, pilot, stages: int = 7):
    await wait_for(pilot, lambda: app.screen.query_one("#runs-table").row_count == 1, what="the run")
    await pilot.press("enter")
    await wait_for(pilot, lambda: type(app.screen).__name__ == "RunDetailScreen", what="detail screen")
    screen = app.screen
    await wait_for(pilot, lambda: screen.query_one("#stage-list").option_count == stages, what="the stage list")
    return screen


def spy_selects(screen) -> list[str | None]:
    """Every stage Run detail switches to, in order."""
    picked: list[str | None] = []
    real = screen._select

    def select(name):
        picked.append(name)
        real(name)
    screen._select = select
    return picked


def stage_row(stage_list, name: str) -> tuple[int, int]:
    """The offset (within the stage list) of `name`'s line."""
    return 4, stage_list._names.index(name) - int(stage_list.scroll_y)


async def terminal_click(app, pilot, x: int, y: int) -> None:
    """A click as a terminal sends it: mouse down and up through the app, which makes the Click
    (and counts a double click: the same place as the click before)."""
    before = app._click_chain_last_offset, app._click_chain_last_time
    for cls in (events.MouseDown, events.MouseUp):
        app.post_message(cls(None, x, y, 0, 0, 1, False, False, False, screen_x=x, screen_y=y))
    await wait_for(pilot, lambda: (app._click_chain_last_offset, app._click_chain_last_time) != before,
                   what="the click")
    await pilot.pause()


# ---- 1. clicks on the stage list -------------------------------------------------------------


@run_async
async def test_double_click_on_a_stage_selects_that_stage(runs, tmp_path):
    finished_run(runs, "done")
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_only_run(app, pilot)
        stages = screen.query_one("#stage-list")
        assert stages._names == tuple(SEVEN)
        picked = spy_selects(screen)
        await pilot.click(stages, offset=stage_row(stages, "prune-width"), times=2)
        await wait_for(pilot, lambda: screen.stage_name == "prune-width", what="the double-clicked stage")
        assert stages.highlighted_stage == "prune-width" and screen.follow is False
        await pilot.click(stages, offset=stage_row(stages, "distill-depth"))
        await pilot.click(stages, offset=stage_row(stages, "distill-depth"))
        await wait_for(pilot, lambda: screen.stage_name == "distill-depth", what="the twice-clicked stage")
        assert "prepare" not in picked and stages.highlighted_stage == "distill-depth"


@run_async
async def test_the_second_click_of_a_double_click_that_opened_the_run_is_not_a_stage_pick(runs, tmp_path,
                                                                                          monkeypatch):
    """A double click on the Runs table opens the run on its first click (the row was highlighted);
    the second click lands on Run detail's stage list, on 'prepare', and must not pick it."""
    finished_run(runs, "done")
    app = make_app(runs, tmp_path)
    monkeypatch.setattr(app, "CLICK_CHAIN_TIME_THRESHOLD", float("inf"))  # a double click however slow the box
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: table.row_count == 1, what="the run")
        x, y = table.region.x + 4, table.region.y + 1  # the first (highlighted) row
        await terminal_click(app, pilot, x, y)
        await wait_for(pilot, lambda: type(app.screen).__name__ == "RunDetailScreen", what="detail screen")
        screen = app.screen
        stages = screen.query_one("#stage-list")
        await wait_for(pilot, lambda: stages.option_count == 7 and screen.stage_name == "eval", what="stage list")
        assert stages.region.contains(x, y)  # where the second click lands
        picked = spy_selects(screen)
        await terminal_click(app, pilot, x, y)
        assert app._chained_clicks == 2
        for _ in range(5):  # the click's messages: highlight, then the screen's handler
            await pilot.pause()
        assert picked == [] and screen.stage_name == "eval" and screen.follow is True
        # a click of its own there still picks the stage
        await terminal_click(app, pilot, x, y + 1)
        await wait_for(pilot, lambda: screen.stage_name == "finetune", what="a later click")
        assert screen.follow is False


# ---- 2. the stage preview on Runs ------------------------------------------------------------


def drawn(widget) -> list[str]:
    return ["".join(seg.text for seg in widget.render_line(y)) for y in range(widget.size.height)]


def stages_shown(app, table) -> list[str]:
    """The stages whose rows are drawn inside the table's part of the screen."""
    visible = table.region.intersection(app.screen.region)
    lines = drawn(table)[:visible.height]
    return [s for s in SEVEN if any(line.split()[:1] == [s] for line in lines)]


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
@run_async
async def test_the_stage_preview_shows_every_stage_of_a_typical_run(runs, tmp_path, size):
    for i in range(12):  # more runs than the runs table shows at 80x24
        finished_run(runs, f"run-{i:02d}")
    app = make_app(runs, tmp_path)
    async with app.run_test(size=size) as pilot:
        table = app.screen.query_one("#runs-table")
        stages = app.screen.query_one("#stages-table")
        await wait_for(pilot, lambda: table.row_count == 12 and stages.row_count == 7, what="runs and a preview")
        await wait_for(pilot, lambda: stages_shown(app, stages) == SEVEN, what=f"all 7 stages at {size}")
        assert stages.max_scroll_y == 0
        assert table.size.height >= 5  # the runs table keeps some rows
        await pilot.press("down", "down")  # another run: the preview keeps its height
        height = app.screen.query_one("#runs-preview").outer_size.height
        await pilot.pause()
        assert app.screen.query_one("#runs-preview").outer_size.height == height
        assert stages_shown(app, stages) == SEVEN


# ---- 3. a search student's table in Run detail -----------------------------------------------


def search_lines(screen) -> list[str]:
    table = screen.query_one("#search-table")
    return [line.rstrip() for line in drawn(table)] if table.display else []


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])  # at 80 columns the Status pane scrolls sideways
@run_async
async def test_a_search_stage_shows_its_search_table_in_run_detail(runs, tmp_path, size):
    from engine.config import dumps_toml
    from engine.contract import human_count

    w = finished_run(runs, "searched", students=("depth", "width", "auto"))
    w.exp["prune"][2] = {"name": "auto", "method": "search", "target_params": 0.6}
    (w.root / "experiment.toml").write_text(dumps_toml(w.exp))
    doc = write_search_json(w)
    cands = doc["candidates"]
    scored = sorted((c for c in cands if c["rank"] is not None), key=lambda c: c["rank"])
    assert len(scored) == 4 and len(cands) > len(scored)  # some candidates not scored
    app = make_app(runs, tmp_path)
    async with app.run_test(size=size) as pilot:
        screen = await open_only_run(app, pilot, stages=9)
        stages = screen.query_one("#stage-list")
        await pilot.click(stages, offset=stage_row(stages, "prune-depth"))
        await wait_for(pilot, lambda: screen.stage_name == "prune-depth", what="prune-depth")
        await pilot.press("i")
        await wait_for(pilot, lambda: "prune-depth" in str(screen.query_one("#status-text").render()),
                       what="prune-depth's status")
        assert search_lines(screen) == []  # a depth student has no search table

        await pilot.click(stages, offset=stage_row(stages, "prune-auto"))
        await wait_for(pilot, lambda: len(search_lines(screen)) > len(cands), what="prune-auto's search table")
        lines = search_lines(screen)
        assert lines[0].startswith(f"search auto: {human_count(int(doc['target']['target']))} params, "
                                   f"4 of {len(cands)} candidates scored by loss")
        body = [line.split() for line in lines if line.split()[:1] and line.split()[0] in "-123456789"]
        assert len(body) == len(cands)  # every candidate, scored or not
        rest = sorted((c for c in cands if c["rank"] is None), key=lambda c: c["screen_rank"])  # best-screened first
        for row, c in zip(body, scored + rest, strict=True):
            s = c["shape"]
            assert row[:6] == [str(c["rank"] or "-"), str(s["num_layers"]), str(s["hidden_size"]),
                               str(s["ffn_hidden_size"]), f"{s['num_attention_heads']}/{s['num_key_value_heads']}",
                               human_count(c["params"])]
            assert row[7] == f"{c['screen_loss']:.4f}" and row[9] == (f"{c['score']:.4f}" if c["rank"] else "-")
        assert body[0][-2:] == ["★", "winner"] and sum("winner" in r for r in body) == 1
        assert "search table" in str(screen.query_one("#stage-summary").render())

        # another stage: the table goes
        await pilot.click(stages, offset=stage_row(stages, "distill-auto"))
        await wait_for(pilot, lambda: screen.stage_name == "distill-auto" and search_lines(screen) == [],
                       what="no search table for distill-auto")
