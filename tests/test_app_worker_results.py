"""A worker's result that arrives while its screen closes is dropped, never raised."""

from __future__ import annotations

import asyncio

from textual.app import App, ComposeResult
from textual.screen import Screen
from textual.widgets import Static

from app.screens.worker_results import while_shown


class Panes(Screen):
    def __init__(self) -> None:
        super().__init__()
        self.shown: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static("", id="pane")

    @while_shown
    def show(self, text: str) -> None:
        self.query_one("#pane", Static).update(text)
        self.shown.append(text)


def test_a_result_reaches_an_open_screen_and_is_dropped_once_its_widgets_are_gone():
    async def scenario() -> None:
        app = App()
        async with app.run_test() as pilot:
            screen = Panes()
            await app.push_screen(screen)
            screen.show("first")
            assert screen.shown == ["first"]
            await screen.query_one("#pane").remove()  # what a closing screen does, widget by widget
            screen.show("late")  # raised NoMatches and ended the app before while_shown
            await app.pop_screen()
            screen.show("after close")
            await pilot.pause()
            assert screen.shown == ["first"]
        assert app.return_code in (0, None)

    asyncio.run(scenario())
