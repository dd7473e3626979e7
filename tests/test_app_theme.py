"""The nav bar stays a band of its own in both themes, also in a 256-colour terminal."""

from __future__ import annotations

from pathlib import Path

from _app_util import finished_run, make_app, run_async
from rich.color import ColorSystem
from textual.widgets import DataTable, OptionList

from app.widgets.nav import NavBar


def _eight_bit(color) -> int:
    return color.rich_color.downgrade(ColorSystem.EIGHT_BIT).number


@run_async
async def test_the_nav_bar_differs_from_the_tables_below_it_in_256_colours(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    finished_run(runs, "one")
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        for theme, screen in [(t, s) for t in ("textual-light", "textual-dark") for s in ("runs", "compare")]:
            app.theme = theme
            await app.run_action(f"show('{screen}')")
            await pilot.pause()
            nav = _eight_bit(app.screen.query_one(NavBar).styles.background)
            below = {_eight_bit(w.styles.background) for w in app.screen.query(OptionList)}
            for table in app.screen.query(DataTable):
                below.add(_eight_bit(table.styles.background))
                for part in ("datatable--header", "datatable--even-row", "datatable--odd-row"):
                    style = table.get_component_styles(part)
                    if style.background.a > 0:
                        below.add(_eight_bit(style.background))
            below.add(_eight_bit(app.screen.styles.background))
            assert nav not in below, (theme, screen, nav, below)
