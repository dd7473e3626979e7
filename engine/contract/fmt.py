"""Numbers and durations as the CLI and the TUI show them (the one copy of each formatter), and the
unit of the sizes the contract's documents hold."""

from __future__ import annotations

# Every `*_gb` field the engine writes (metrics gpu_mem_gb, results peak_memory_gb, search memory_gb)
# is in GiB, 2**30 bytes: what torch and nvidia-smi report.
GIB = 2**30


def human_count(n: float, digits: int = 2) -> str:
    """1234567 -> '1.23M' (B, M, k); below a thousand the plain number."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.{digits}f}{unit}"
    return f"{n:.0f}"


def duration(seconds: float | None) -> str:
    """A length of time in at most six characters: 42s, 3m05s, 12m, 1h05m, 2d03h; '–' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def age(seconds: float) -> str:
    """How long ago, in its largest unit: 42s, 3m, 5h, 2d."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"
