"""prune-<name>/search.json read: the table `compare` prints (and writes into report.md) and the TUI
shows, the winner marked. The document is written by engine.search.table.search_document (the prune
stage); its Pareto frontier is engine.contract.frontier. Torch-free: the TUI reads it through the contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.contract.files import read_json
from engine.contract.fmt import human_count
from engine.contract.layout import RunLayout
from engine.stages import PRUNE, method_of

COLUMNS = ["rank", "layers", "hidden", "ffn", "heads", "params", "memory GiB", "screen", "pruned loss", "score", ""]


def read_search(layout: RunLayout, stage: str) -> dict[str, Any] | None:
    doc = read_json(layout.search_file(stage))
    return doc if isinstance(doc, dict) and isinstance(doc.get("candidates"), list) else None


def search_rows(doc: dict[str, Any]) -> list[list[str]]:
    """One row per scored candidate, best first; the winner's last cell says so."""
    scored = sorted((c for c in doc["candidates"] if c.get("rank") is not None), key=lambda c: c["rank"])
    return [candidate_cells(c) + ["<- chosen" if c.get("chosen") else ""] for c in scored]


def candidate_cells(c: dict[str, Any]) -> list[str]:
    """The cells of one candidate under COLUMNS but the last (the winner's mark, each view its own)."""
    def f(x: Any, digits: int = 4) -> str:
        return f"{x:.{digits}f}" if isinstance(x, (int, float)) else "-"

    s, rank = c["shape"], c.get("rank")
    return [str(rank) if rank is not None else "-", str(s["num_layers"]), str(s["hidden_size"]),
            str(s["ffn_hidden_size"]), f"{s['num_attention_heads']}/{s['num_key_value_heads']}",
            human_count(c["params"]), f(c.get("memory_gb"), 3), f(c.get("screen_loss")), f(c.get("loss")),
            f(c.get("score"))]


def title(name: str, doc: dict[str, Any]) -> str:
    t = doc.get("target", {})
    goal = (f"{human_count(int(t['target']))} params" if t.get("metric") == "params"
            else f"{t.get('target')} GiB") if t else "?"
    n, scored = len(doc["candidates"]), sum(c.get("rank") is not None for c in doc["candidates"])
    sc = doc.get("screen") if isinstance(doc.get("screen"), dict) else None
    screen = (f", the best of {sc.get('screened')} screened by the loss on {sc.get('batches')} batches"
              + (" (capped by screen_max)" if sc.get("capped") else "")) if sc else ""
    return f"search {name}: {goal}, {scored} of {n} candidates scored by {doc.get('score', 'loss')}{screen}"


def search_docs(run_dirs: list[str | Path]) -> list[tuple[str, dict[str, Any]]]:
    """(label, search.json) of every search student of the runs that has one."""
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
