"""prune-<name>/search.json written: `search_document`, the document a search writes (the prune stage).
Its reading side (the table `compare` prints and the TUI shows) is engine.contract.search_table. Torch-free."""

from __future__ import annotations

from typing import Any

from engine.contract.frontier import frontier


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
