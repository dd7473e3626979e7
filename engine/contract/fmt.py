"""Numbers and durations as the CLI and the TUI show them."""

from __future__ import annotations


def human_count(n: float, digits: int = 2) -> str:
    """1234567 -> '1.23M' (B, M, k); below a thousand the plain number."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.{digits}f}{unit}"
    return f"{n:.0f}"
