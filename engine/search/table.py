"""prune-<name>/search.json: the document a search writes (`search_document`) and the table read from
it, which `compare` prints (and writes into report.md) and the TUI shows, the winner marked. Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.contract import RunLayout, human_count, read_json
from engine.contract.frontier import frontier
from engine.stages import PRUNE

COLUMNS = ["rank", "layers", "hidden", "ffn", "heads", "params", "memory GiB", "screen", "pruned loss", "score", ""]


def search_document(space: Any, score: str, higher_is_better: bool, calibration: dict[str, Any],
                    ranked: list[int], losses: dict[int, float], scores: dict[int, float],
                    seconds: dict[int, float], screen: dict[int, float] | None = None,
                    screen_seconds: dict[int, float] | None = None) -> dict[str, Any]:
    """search.json for a search over `space` (engine.shapes.candidates.SearchSpace): every candidate
    with its shape, params and memory; the screened ones with their screen loss (`screen`: the loss
    right after pruning on space.screen_batches batches), its rank among them and its time; the
    scored ones (`ranked`: their indices, best first, as engine.search.scoring.Scorer.ranked gives
    them) with their loss, score, rank and time, the first `chosen`. `calibration`: the one pass
    every candidate was cut by (kind and its settings). "screen" sums the screen up: how many were
    screened of how many, whether screen_max capped it, and its cost in total and per candidate.
    "frontier": the Pareto frontier of the scored candidates (engine.contract.frontier)."""
    rank = {i: r + 1 for r, i in enumerate(ranked)}
    screen, screen_seconds = screen or {}, screen_seconds or {}
    screen_rank = {i: r + 1 for r, i in enumerate(sorted(screen, key=lambda i: (screen[i], i)))}
    total = sum(screen_seconds.values())
    doc = {
        "target": space.budget.to_json(), "score": score, "higher_is_better": higher_is_better,
        "selection": space.selection if space.drops_layers() else None, "axes": list(space.axes),
        "calibration": calibration,
        "screen": {"batches": space.screen_batches, "screened": len(screen), "candidates": len(space.candidates),
                   "capped": len(screen) < len(space.candidates), "top_k": space.top_k, "seconds": round(total, 3),
                   "seconds_per_candidate": round(total / len(screen), 4) if screen else None} if screen else None,
        "candidates": [{"shape": c.shape_json(), "params": c.params, "memory_gb": round(c.memory_gb, 6),
                        "screen_loss": screen.get(i), "screen_rank": screen_rank.get(i),
                        "screen_seconds": round(screen_seconds[i], 4) if i in screen_seconds else None,
                        "loss": losses.get(i), "score": scores.get(i), "rank": rank.get(i), "chosen": rank.get(i) == 1,
                        "seconds": round(seconds[i], 3) if i in seconds else None}
                       for i, c in enumerate(space.candidates)]}
    doc["frontier"] = frontier(doc["candidates"], higher_is_better)
    return doc


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
            doc = read_search(layout, PRUNE.stage(p.name)) if p.method == "search" else None
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
