"""The key bar fits the terminal: at 80 columns every screen still shows its own keys and help."""

from __future__ import annotations

import asyncio
from pathlib import Path

from _app_util import make_app
from rich.text import Text

from app.widgets.keybar import KeyBar


def _plain(markup: str) -> str:
    return Text.from_markup(markup).plain


def test_the_key_bar_fits_80_columns_on_every_screen_and_keeps_help(tmp_path: Path) -> None:
    async def scenario() -> dict[str, tuple[str, str]]:
        app = make_app(tmp_path / "runs", tmp_path)
        seen = {}
        async with app.run_test(size=(80, 24)) as pilot:
            for name in ("compose", "compare", "gpus"):
                await app.run_action(f"show('{name}')")
                await pilot.pause()
                bar = app.screen.query_one(KeyBar)
                seen[name] = (_plain(bar.keys_text(80)), _plain(bar.keys_text()))
        return seen

    seen = asyncio.run(scenario())
    for name, (fitted, full) in seen.items():
        assert len(fitted) <= 80, (name, fitted)
        assert fitted.rstrip().endswith("? Help"), (name, fitted)
        first_screen_key = full.split("  ")[0]
        assert fitted.startswith(first_screen_key[:6]), (name, fitted, full)
    # Compose has more keys than 80 columns hold: its own keys come before the app's switches
    fitted, full = seen["compose"]
    assert len(full) > 80 and "Save" in fitted and "Compare" not in fitted
