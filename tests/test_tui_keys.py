"""Keys that arrive together (a loaded box, SSH lag, a paste) are applied strictly in order, focus
moves included; esc then a digit leaves the field whatever the terminal made of them. Bursts are
posted to the app all at once, before it handles any, as a terminal read of several keys does."""

from __future__ import annotations

import time

import pytest
from _app_util import make_app, run_async, show, wait_for
from textual import events


@pytest.fixture
def runs(tmp_path):
    d = tmp_path / "runs"
    d.mkdir()
    return d


def burst(app, keys: list[str]) -> None:
    """Keys in one read: all queued before the app handles any."""
    chars = {"tab": "\t", "space": " ", "escape": "\x1b"}
    for key in keys:
        app.post_message(events.Key(key, key if len(key) == 1 else chars.get(key)))


async def compose(app, pilot):
    await show(pilot, app, "2", "ComposeScreen")
    await wait_for(pilot, app.screen.form_ready.is_set, what="the form")
    return app.screen


async def settled(pilot, rounds: int = 25) -> None:
    """Let every queued key run to its end: each pause waits until the app and the screen's widgets
    have handled what was queued when it began; a key goes app -> field -> parents -> app, so a burst
    takes several rounds (counted, not timed: a loaded machine only makes each round slower)."""
    for _ in range(rounds):
        await pilot.pause()


@run_async
async def test_tab_in_a_burst_moves_focus_in_order(runs, tmp_path, monkeypatch):
    """`6 Tab 6 Tab 2` gives 6, 6, 2 in three fields (Textual applied the Tabs after the digits
    behind them: 662 in the first field); `a b Tab c d` gives "ab" and "cd"."""
    monkeypatch.chdir(tmp_path)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await compose(app, pilot)
        ids = ("#f-finetune-steps", "#f-finetune-global-batch-size", "#f-finetune-micro-batch-size")
        steps, gbs, mbs = (screen.query_one(i) for i in ids)
        steps.focus()
        await pilot.pause()
        burst(app, ["ctrl+u", "6", "tab", "ctrl+u", "6", "tab", "ctrl+u", "2"])
        await settled(pilot)
        assert (steps.value, gbs.value, mbs.value) == ("6", "6", "2")
        assert screen.raw["finetune"]["steps"] == 6 and screen.raw["finetune"]["global_batch_size"] == 6
        assert app.focused is mbs
        # back with shift+tab, Backspace included
        burst(app, ["shift+tab", "backspace", "8", "shift+tab", "end", "backspace", "9"])
        await settled(pilot)
        assert (steps.value, gbs.value, mbs.value) == ("9", "8", "2")

        name, runs_dir = screen.query_one("#f-name"), screen.query_one("#f-runs-dir")
        name.focus()
        await pilot.pause()
        burst(app, ["ctrl+u", "a", "b", "tab", "ctrl+u", "c", "d"])
        await settled(pilot)
        assert (name.value, runs_dir.value) == ("ab", "cd")


@run_async
async def test_a_choice_field_in_a_burst_gets_its_own_keys(runs, tmp_path, monkeypatch):
    """space on a choice field, then Tab, then typing: the space cycles that field, not the next."""
    monkeypatch.chdir(tmp_path)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await compose(app, pilot)
        dtype, tok = screen.query_one("#f-model-dtype"), screen.query_one("#f-model-tokenizer")
        before = dtype.value
        dtype.focus()
        await pilot.pause()
        burst(app, ["space", "tab", "x", "y"])
        await settled(pilot)
        assert dtype.value != before and app.focused is tok and tok.value == "xy"


@run_async
async def test_esc_then_digit_leaves_the_field(runs, tmp_path, monkeypatch):
    """esc then 1 in one read: the field is left and Runs shown, nothing typed. A terminal turns
    esc and a key within ESCDELAY into alt+key (`alt+1`): that is esc, then the key."""
    monkeypatch.chdir(tmp_path)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await compose(app, pilot)
        steps = screen.query_one("#f-finetune-steps")
        steps.focus()
        await pilot.pause()
        burst(app, ["ctrl+u", "4", "escape", "1"])
        await settled(pilot)
        assert steps.value == "4" and screen.focused is None and app.current_mode == "runs"

        await pilot.press("2")
        await wait_for(pilot, lambda: app.current_mode == "compose")
        steps.focus()
        await pilot.pause()
        app.post_message(events.Key("alt+1", "1"))
        await settled(pilot)
        assert steps.value == "4" and screen.focused is None and app.current_mode == "runs"


def test_the_terminal_parser_reads_esc_digit_as_alt_digit(runs, tmp_path):
    """In one read, esc 1 was `¡` (Textual's table for WezTerm's Option+1); once the app exists,
    the parser reports alt+1 (read as esc, then 1, above)."""
    from textual._xterm_parser import XTermParser

    make_app(runs, tmp_path)
    parser = XTermParser()
    keys = list(parser.feed("\x1b1"))
    while not keys:  # the parser waits ESCDELAY for more of a sequence, then reports what it has
        time.sleep(0.01)
        keys += parser.tick()
    assert [(k.key, k.character) for k in keys] == [("alt+1", "1")]
