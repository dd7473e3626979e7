"""A DataTable that keeps its rendered rows when a restyle changes nothing it draws with, and whose
cell updates redraw only the row they change."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget
from textual.widgets import DataTable
from textual.widgets._data_table import ColumnKey, RowKey  # noqa: PLC2701 - DataTable's own key types


def cell_look(cell: Text | str) -> tuple:
    """What a cell draws: its text, style and spans (Text's == leaves the style out)."""
    return (cell.plain, cell.style, cell.spans) if isinstance(cell, Text) else (cell,)


class StableTable(DataTable):
    """Textual restyles every widget of a screen each time the screen is shown, and DataTable drops
    all its rendered cells and lines on every restyle (`notify_style_update`): showing the Runs
    screen again re-rendered its visible rows cell by cell, 30-80 ms on a small CPU. Here they are
    dropped only when something its styles (and its component classes': header, cursor, zebra
    rows) depend on changed: the theme, the table's classes or pseudo-classes (focus, hover, ...),
    or its resolved style.

    `set_cells` is `update_cell` for the cells of one row that redraws only that row: DataTable's
    `update_cell` bumps a counter that is part of every render cache key, so one changed cell made
    it re-render every visible row (13 rows x 11 cells, 25-40 ms on a small CPU, every second while
    a run's ETA changes)."""

    _style_key: tuple | None = None
    rows_redrawn = 0  # rows redrawn by set_cells (tests)
    full_updates = 0  # set_cells calls that fell back to update_cell (tests)

    def notify_style_update(self) -> None:
        Widget.notify_style_update(self)  # the widget's own style caches: always
        key = (self.app.theme, frozenset(self.classes), frozenset(self.get_pseudo_classes()), self.rich_style)
        if key != self._style_key:
            self._style_key = key
            super().notify_style_update()  # DataTable's: drop the rendered rows

    def set_cells(self, row_key: str, cells: dict[str, object]) -> None:
        """Set these cells (column key -> value) of one row; only that row's rendered cells and
        lines are dropped and only its region is refreshed. Widths are not recomputed (the columns
        have fixed widths), like `update_cell(..., update_width=False)`."""
        if not cells:
            return
        try:
            rkey = RowKey(row_key)
            row_index = self._row_locations.get(rkey)
            data = self._data[rkey]
            for col in cells:
                if ColumnKey(col) not in self._column_locations:
                    raise KeyError(col)
            caches = (self._cell_render_cache, self._row_render_cache, self._line_cache,
                      self._row_renderable_cache)
        except (AttributeError, KeyError):  # not DataTable's layout as known here: the public way
            self.full_updates += 1
            for col, value in cells.items():
                self.update_cell(row_key, col, value)
            return
        if row_index is None:
            return
        for col, value in cells.items():
            data[ColumnKey(col)] = value
        cell_cache, row_cache, line_cache, renderables = caches
        # cell and row renders are keyed by row key first, row renderables by (update count, index),
        # lines by their y in the table (the header included, as in _get_row_region)
        for key in [k for k in cell_cache.keys() if k[0] == rkey]:
            cell_cache.discard(key)
        for key in [k for k in row_cache.keys() if k[0] == rkey]:
            row_cache.discard(key)
        renderables.discard((self._update_count, row_index))
        region = self._get_row_region(row_index)
        for key in [k for k in line_cache.keys() if region.y <= k[0] < region.bottom]:
            line_cache.discard(key)
        self.rows_redrawn += 1
        self.refresh_row(row_index)
