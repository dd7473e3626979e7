"""Where a scatter plot's point labels go, in the plot's character cells: beside their point, never
over a marker (any point's) nor over another label. plotext draws text over whatever is in its
cells, so a label placed at a fixed offset in data units hid the markers of nearby points."""

from __future__ import annotations

import math

Cell = tuple[int, int]  # (column, row) in the canvas; row 0 is the bottom one, as plotext counts


def to_cell(value: float, lim: tuple[float, float], bins: int) -> int:
    """The column (or row) plotext draws `value` in, on a canvas `bins` cells wide over `lim`
    (plotext's get_matrix_data)."""
    lo, hi = lim
    return math.floor(round(0.5 + (bins - 1) * (value - lo) / ((hi - lo) or 1.0), 8))


def from_cell(cell: int, lim: tuple[float, float], bins: int) -> float:
    """A data value that plotext draws in `cell` (the middle of its span)."""
    lo, hi = lim
    return lo + cell * (hi - lo) / max(1, bins - 1)


def place_labels(markers: list[Cell], labels: list[str], width: int, height: int) -> list[tuple[Cell, str] | None]:
    """Each label's start cell and text (cut short when no whole place is free; None: no room at
    all), for the point at the same index of `markers`. Tried in order: right of the point with a
    one-cell gap, left of it, the row above, the row below."""
    taken = {m for m in markers}  # cells a label may not cover
    out: list[tuple[Cell, str] | None] = []
    for (col, row), label in zip(markers, labels, strict=True):
        n = len(label)
        tries = [(col + 2, row), (col - 1 - n, row), (col, row + 1), (col, row - 1),
                 (col - n + 1, row + 1), (col - n + 1, row - 1)]
        spot = next(((c, r) for c, r in tries if _free(c, r, n, taken, width, height)), None)
        text = label
        if spot is None:  # the room right of the point, up to the next marker or label
            free = 0
            while col + 2 + free < width and (col + 2 + free, row) not in taken:
                free += 1
            text = label[:free - 1] + "…" if free >= 2 else ""
            spot = (col + 2, row) if text else None
        out.append((spot, text) if spot is not None else None)
        if spot is not None:  # a label and one cell either side of it
            taken |= {(c, spot[1]) for c in range(spot[0] - 1, spot[0] + len(text) + 1)}
    return out


def _free(col: int, row: int, n: int, taken: set[Cell], width: int, height: int) -> bool:
    return (0 <= col and col + n <= width and 0 <= row < height
            and not any((c, row) in taken for c in range(col, col + n)))
