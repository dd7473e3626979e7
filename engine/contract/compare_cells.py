"""What `compare` and the TUI's Compare show of the model rows (compare_rows.ModelRow): a row's cells
in the loss table (its name first), the decision columns (tasks, decode batch sizes) the rows have, the
quality-vs-speed points, and the mark of a task score no better than guessing. Torch-free: the TUI
reads them through the contract; engine.compare renders them (rich, markdown, PNG, HTML)."""

from __future__ import annotations

from engine.contract.compare_rows import ModelRow
from engine.contract.fmt import human_count

AT_CHANCE = "(chance)"  # beside a task score no better than guessing

# the loss table's columns: row_cells' cells
COLUMNS = ["model", "layers", "hidden", "ffn", "heads", "params", "pruned", "distilled", "ppl", "tokens",
           "tok/s"]


def count_cell(n: int | None, digits: int = 2) -> str:
    """"1.23M"; "-" unknown."""
    return "-" if n is None else human_count(n, digits)


def number_cell(x: float | None, digits: int = 3) -> str:
    """"3.142"; "-" unknown."""
    return "-" if x is None else f"{x:.{digits}f}"


def row_cells(row: ModelRow, many_runs: bool) -> list[str]:
    """The row under COLUMNS; its first cell, the model's name ("run:label" when the rows are of several
    runs, "(method)" after a student named otherwise), is how every view names the model."""
    name = f"{row.run}:{row.label}" if many_runs else row.label
    if row.method and row.method not in ("teacher", row.label):
        name += f" ({row.method})"
    return [name, str(row.layers or "-"), str(row.hidden or "-"), str(row.ffn or "-"), row.heads or "-",
            count_cell(row.params), number_cell(row.pruned_loss), number_cell(row.distilled_loss),
            number_cell(row.ppl, 1), count_cell(row.tokens, 1),
            count_cell(int(row.tokens_per_s), 1) if row.tokens_per_s else "-"]


def decide_columns(rows: list[ModelRow]) -> tuple[list[str], list[str]]:
    """(task names, decode batch sizes) that any row has, in first-seen order."""
    tasks = list(dict.fromkeys(t for r in rows for t in r.tasks))
    batches = sorted({b for r in rows for b in r.decode_tokens_per_s}, key=lambda b: int(b) if b.isdigit() else 0)
    return tasks, batches


def quality_speed_points(rows: list[ModelRow]) -> tuple[str, list[tuple[str, str, float, float]]]:
    """(y-axis name, [(label, method, decode tokens/s at the smallest batch, quality)]): quality is
    the task mean when there are task scores, else the validation loss."""
    use_tasks = any(r.tasks for r in rows)
    many = len({r.run for r in rows}) > 1
    pts = []
    for r in rows:
        speed = r.decode_tokens_per_s.get(decide_columns(rows)[1][0]) if r.decode_tokens_per_s else None
        q = r.task_mean if use_tasks else r.distilled_loss
        if speed is not None and q is not None:
            pts.append((row_cells(r, many)[0], r.method, speed, q))
    return ("task score (mean)" if use_tasks else "validation loss (lower is better)"), pts
