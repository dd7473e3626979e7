"""`compare` pictures: validation-loss curves (terminal and PNG) and quality vs speed (PNG)."""

from __future__ import annotations

import io
from pathlib import Path

from engine.contract import (
    write_atomic,
)
from engine.contract.compare_cells import decide_columns, quality_speed_points
from engine.contract.compare_rows import ModelRow


def write_quality_speed_png(rows: list[ModelRow], path: Path) -> bool:
    """Quality against decode speed, depth and width students told apart; False when nothing to plot."""
    ylabel, pts = quality_speed_points(rows)
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"teacher": ("*", "black"), "depth": ("o", "tab:blue"), "width": ("s", "tab:orange")}
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    seen: set[str] = set()
    for label, method, x, y in pts:
        marker, color = style.get(method, ("D", "tab:green"))
        ax.scatter([x], [y], marker=marker, color=color, s=90 if method == "teacher" else 50,
                   label=None if method in seen else method)
        seen.add(method)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    batch = decide_columns(rows)[1][0]
    ax.set_xlabel(f"decode tokens/s at batch {batch} (right is faster)")
    ax.set_ylabel(ylabel)
    ax.set_title("quality vs speed")
    _save_png(fig, ax, path)
    return True


def terminal_chart(series: dict[str, tuple[list[float], list[float]]], width: int = 100, height: int = 22) -> str:
    import plotext as plt

    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("pro")
    for label, (xs, ys) in series.items():
        plt.plot(xs, ys, label=label, marker="braille")
    plt.title("validation loss while distilling (step 0 = right after pruning)")
    plt.xlabel("distillation step")
    out = plt.build()
    plt.clear_figure()
    return out


def write_png(series: dict[str, tuple[list[float], list[float]]], path: Path, teacher: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    if teacher is not None:
        ax.axhline(teacher, color="gray", linestyle="--", linewidth=1, label="teacher")
    ax.set_xlabel("distillation step (0 = right after pruning)")
    ax.set_ylabel("validation loss")
    ax.set_title("depth vs width: validation loss while distilling")
    _save_png(fig, ax, path)


def _save_png(fig, ax, path: Path) -> None:
    """Grid, legend and tight layout; then the figure as a PNG written atomically, and closed."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())
