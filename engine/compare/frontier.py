"""`compare`: each search student's Pareto frontier (engine.contract.frontier), printed and in report.md,
one row per frontier point, fewest parameters first, the chosen candidate marked; a chosen one off
the frontier (another scored as well for less) is listed after it, marked so. No torch import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.contract import human_count
from engine.contract.frontier import BY_KEY, Frontier
from engine.contract.search_doc import SearchDoc
from engine.contract.search_table import search_docs

CHOSEN, DOMINATED = "<- chosen", "<- chosen (off the frontier)"


def frontier_title(name: str, doc: SearchDoc, f: Frontier) -> str:
    axes = [BY_KEY[k].label if k in BY_KEY else k for k in f.axes]
    better = "higher" if f.higher_is_better else "lower"
    return (f"frontier {name}: {doc.quality_name} ({better} is better) against {', '.join(axes) or '-'}; "
            f"{len(f.points)} of {'?' if f.measured is None else f.measured} scored candidates")


def frontier_columns(f: Frontier) -> list[str]:
    costs = [BY_KEY[k].label for k in f.axes if k in BY_KEY]
    return [*costs, "score", "layers", "hidden", "ffn", "heads", ""]


def frontier_rows(doc: SearchDoc, f: Frontier) -> list[list[str]]:
    """The frontier's points, then the chosen candidate when it is not one of them."""
    chosen = f.chosen
    keys = [k for k in f.axes if k in BY_KEY]
    rows = []
    for i in [*f.points, *([chosen] if chosen is not None and chosen not in f.points else [])]:
        c = doc.candidates[i]
        s = c.shape
        dims = [str(s.num_layers), str(s.hidden_size), str(s.ffn_hidden_size), s.heads] if s else ["-"] * 3 + ["-/-"]
        mark = "" if i != chosen else CHOSEN if i in f.points else DOMINATED
        rows.append([*(_cell(k, c.value(k)) for k in keys), _cell("score", c.value(f.quality)), *dims, mark])
    return rows


FORMATS = {"memory_gb": "{:.3f}", "score": "{:.4f}", "decode_ms": "{:.3g}", "prefill_tokens_per_s": "{:,.0f}"}


def _cell(key: str, v: float | None) -> str:
    if v is None:
        return "-"
    return human_count(v) if key == "params" else FORMATS.get(key, "{:.4g}").format(v)


def frontiers(run_dirs: list[str | Path]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, columns, rows) of every search student's frontier that has a point."""
    out = []
    for name, doc in search_docs(run_dirs):
        f = doc.frontier
        if f.points:
            out.append((frontier_title(name, doc, f), frontier_columns(f), frontier_rows(doc, f)))
    return out


def print_frontiers(run_dirs: list[str | Path], console: Any) -> str:
    """Print the frontiers; return them as report.md's section ('' without any)."""
    from rich import box
    from rich.table import Table

    parts = []
    for title, columns, rows in frontiers(run_dirs):
        console.print(title, markup=False, highlight=False)  # its own line: a table's title wraps at its width
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
        for i, c in enumerate(columns):
            t.add_column(c, justify="left" if i == len(columns) - 1 else "right", no_wrap=True)
        for row in rows:
            t.add_row(*row, style="bold" if row[-1] else None)
        console.print(t)
        parts += ["", f"### {title}", "", "| " + " | ".join(c or "chosen" for c in columns) + " |",
                  "|" + "|".join("---" for _ in columns) + "|"]
        parts += ["| " + " | ".join(r[:-1] + [r[-1].removeprefix("<- ")]) + " |" for r in rows]
    return "\n".join(parts) + ("\n" if parts else "")
