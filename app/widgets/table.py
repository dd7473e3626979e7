"""A DataTable that keeps its rendered rows when a restyle changes nothing it draws with."""

from __future__ import annotations

from textual.widget import Widget
from textual.widgets import DataTable


class StableTable(DataTable):
    """Textual restyles every widget of a screen each time the screen is shown, and DataTable drops
    all its rendered cells and lines on every restyle (`notify_style_update`): showing the Runs
    screen again re-rendered its visible rows cell by cell, 30-80 ms on a small CPU. Here they are
    dropped only when something its styles (and its component classes': header, cursor, zebra
    rows) depend on changed: the theme, the table's classes or pseudo-classes (focus, hover, ...),
    or its resolved style."""

    _style_key: tuple | None = None

    def notify_style_update(self) -> None:
        Widget.notify_style_update(self)  # the widget's own style caches: always
        key = (self.app.theme, frozenset(self.classes), frozenset(self.get_pseudo_classes()), self.rich_style)
        if key != self._style_key:
            self._style_key = key
            super().notify_style_update()  # DataTable's: drop the rendered rows
