"""Short, fixed-width renderings of numbers and durations for narrow (80 column) tables."""

from __future__ import annotations

from engine.contract.fmt import age, duration

__all__ = ["STATE_GLYPH", "age", "bar", "duration", "gpus", "loss", "si"]

STATE_GLYPH = {"pending": "○", "running": "●", "succeeded": "✓", "failed": "✗", "cancelled": "⊘"}


def loss(v: float | None) -> str:
    return "–" if v is None else (f"{v:.3f}" if v < 100 else f"{v:.4g}")


def si(v: float | None, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    if v is None:
        return "–"
    for suffix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.3g}{suffix}{unit}"
    return f"{v:.3g}{unit}" if isinstance(v, float) else f"{v}{unit}"


def bar(fraction: float | None, width: int = 10) -> str:
    """A text progress bar with eighth-block resolution."""
    if fraction is None:
        return "·" * width
    fraction = max(0.0, min(1.0, fraction))
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[part] if part else ""
    return ("█" * full + partial).ljust(width, "·")[:width]


def gpus(ids: tuple[int, ...] | list[int]) -> str:
    return ",".join(str(i) for i in ids) if ids else "–"
