"""`compare`: each audited search's audit (engine/search/audit.py), printed and in report.md: a line with
the Spearman correlations and whether the chosen shape was the best, then the audited candidates by
score rank with their final validation loss (with audit_seeds, the mean +- half the seeds' range). No torch
import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.contract.files import DamagedFile
from engine.contract.search_audit import audit_line
from engine.contract.search_doc import SearchDoc
from engine.contract.search_table import search_docs

COLUMNS = ["rank", "shape", "screen", "score", "final loss", "final rank", ""]


def audit_rows(doc: SearchDoc) -> list[list[str]]:
    def f(x: float | None) -> str:
        return f"{x:.4f}" if x is not None else "-"

    if doc.audit is None:
        return []
    best = doc.audit.best_index
    rows = []
    for a in doc.audit.candidates:
        c = doc.candidate(a.index)
        if c is None:
            raise DamagedFile(f"search.json's audit: index {a.index} is no candidate")
        mark = ", ".join(m for m, on in (("chosen", c.chosen), ("best after distillation", a.index == best)) if on)
        final = f(a.final_loss)
        if len(a.final_losses) > 1:  # audit_seeds: the mean, +- half the seeds' range
            final += f" ±{(max(a.final_losses) - min(a.final_losses)) / 2:.4f}"
        rows.append([str(a.rank), c.need_shape().label, f(a.screen_loss), f(a.score), final, str(a.final_rank), mark])
    return rows


def audits(run_dirs: list[str | Path]) -> list[tuple[str, list[list[str]]]]:
    """(line, rows) of every search student that was audited."""
    out = []
    for name, doc in search_docs(run_dirs):
        line = audit_line(doc)
        if line:
            out.append((f"search {name}: {line}", audit_rows(doc)))
    return out


def print_audits(run_dirs: list[str | Path], console: Any) -> str:
    """Print each audit; its markdown for report.md ("" when no search was audited)."""
    from rich import box
    from rich.table import Table

    parts: list[str] = []
    for line, rows in audits(run_dirs):
        console.print(line, soft_wrap=True, markup=False, highlight=False)  # one line, however narrow
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
        for i, c in enumerate(COLUMNS):
            t.add_column(c, justify="left" if i in (1, len(COLUMNS) - 1) else "right", no_wrap=i != 1)
        for r in rows:
            t.add_row(*r, style="bold" if "chosen" in r[-1] else None)
        console.print(t)
        parts += ["", f"### {line}", "", "| " + " | ".join(c or "mark" for c in COLUMNS) + " |",
                  "|" + "|".join("---" for _ in COLUMNS) + "|", *("| " + " | ".join(r) + " |" for r in rows)]
    return "\n".join(parts) + ("\n" if parts else "")
