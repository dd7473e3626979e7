"""prune-<name>/search.json read: the table `compare` prints (and writes into report.md) and the TUI
shows, the winner marked. The document is written by engine.search.table.search_document (the prune
stage) and read once into a SearchDoc (engine.contract.search_doc); its Pareto frontier is
engine.contract.frontier. Torch-free: the TUI reads it through the contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.contract.files import DamagedFile
from engine.contract.fmt import human_count
from engine.contract.layout import RunLayout
from engine.contract.search_doc import Candidate, SearchDoc, read_search_doc
from engine.stages import PRUNE, method_of

COLUMNS = ["rank", "layers", "hidden", "ffn", "heads", "params", "memory GiB", "screen", "pruned loss", "score", ""]


def read_search(layout: RunLayout, stage: str) -> SearchDoc | None:
    """The stage's search.json, typed (engine.contract.search_doc); None when there is none (yet) or
    it is not one."""
    return read_search_doc(layout.search_file(stage))


def search_rows(doc: SearchDoc) -> list[list[str]]:
    """One row per scored candidate, best first; the winner's last cell says so."""
    return [candidate_cells(c) + ["<- chosen" if c.chosen else ""] for c in doc.scored]


def candidate_cells(c: Candidate) -> list[str]:
    """The cells of one candidate under COLUMNS but the last (the winner's mark, each view its own);
    ValueError for a candidate without a shape (a hand-edited or foreign file)."""
    def f(x: float | None, digits: int = 4) -> str:
        return f"{x:.{digits}f}" if x is not None else "-"

    s = c.need_shape()
    if c.params is None:
        raise DamagedFile(f"search.json: candidate {c.index} has no parameter count")
    return [str(c.rank) if c.rank is not None else "-", str(s.num_layers), str(s.hidden_size),
            str(s.ffn_hidden_size), s.heads, human_count(c.params), f(c.memory_gb, 3), f(c.screen_loss), f(c.loss),
            f(c.score)]


def title(name: str, doc: SearchDoc) -> str:
    t = doc.target
    if t is None:
        goal = "?"
    elif t.metric == "params":
        if t.target is None:
            raise DamagedFile("search.json's target has no number")
        goal = f"{human_count(int(t.target))} params"
    else:
        goal = f"{t.target} GiB"
    n, scored = len(doc.candidates), sum(c.scored for c in doc.candidates)
    sc = doc.screen
    screen = (f", the best of {sc.screened} screened by the loss on {sc.batches} batches"
              + (" (capped by screen_max)" if sc.capped else "")) if sc else ""
    seeds = f" (mean of {doc.score_seeds} data orders)" if doc.score_seeds > 1 else ""
    return f"search {name}: {goal}, {scored} of {n} candidates scored by {doc.score_name}{seeds}{screen}"


def search_docs(run_dirs: list[str | Path]) -> list[tuple[str, SearchDoc]]:
    """(label, typed search.json) of every search student of the runs that has one."""
    from engine.config import load_experiment

    out = []
    for rd in run_dirs:
        layout = RunLayout(rd)
        exp = load_experiment(layout.experiment_file)  # compare has checked that it is a run directory
        for p in exp.prune:
            doc = read_search(layout, PRUNE.stage(p.name)) if method_of(p.method).searches else None
            if doc is not None:
                out.append((f"{exp.name}:{p.name}" if len(run_dirs) > 1 else p.name, doc))
    return out


def rich_search_tables(run_dirs: list[str | Path]) -> list[Any]:
    from rich import box
    from rich.table import Table

    tables = []
    for name, doc in search_docs(run_dirs):
        t = Table(title=title(name, doc), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=0)
        for i, c in enumerate(COLUMNS):
            t.add_column(c, justify="left" if i == len(COLUMNS) - 1 else "right", no_wrap=True)
        for row in search_rows(doc):
            t.add_row(*row, style="bold" if row[-1] else None)
        tables.append(t)
    return tables


def search_markdown(run_dirs: list[str | Path]) -> str:
    parts = []
    for name, doc in search_docs(run_dirs):
        parts += ["", f"### {title(name, doc)}", "", "| " + " | ".join(c or "chosen" for c in COLUMNS) + " |",
                  "|" + "|".join("---" for _ in COLUMNS) + "|"]
        parts += ["| " + " | ".join(r[:-1] + ["yes" if r[-1] else ""]) + " |" for r in search_rows(doc)]
    return "\n".join(parts) + ("\n" if parts else "")
