"""search.json's "audit" read for people: the line `compare`, the stage log and the TUI show (its shape
and how it is computed: engine/search/audit.py; read into engine.contract.search_doc.Audit). Pure Python,
torch-free: the TUI reads it through the contract, as it reads the frontier (engine/contract/frontier.py)."""

from __future__ import annotations

from typing import Any

from engine.contract.files import DamagedFile
from engine.contract.search_doc import SearchDoc, search_doc


def audit_line(doc: SearchDoc | dict[str, Any]) -> str | None:
    """One line for `compare` and the TUI; None when the search was not audited. ValueError when the
    audit names a best candidate the list does not have (a hand-edited or foreign file). The prune
    stage's log passes the document it has just written (a dict): it is read as a reader would."""
    if isinstance(doc, dict):
        typed = search_doc(doc)
        if typed is None:
            return None
        doc = typed
    a = doc.audit
    if a is None or not a.candidates:
        return None

    def rho(v: float | None) -> str:
        return f"{v:+.2f}" if v is not None else "n/a"

    done = f"{a.done} of {a.requested} best-scored" + (", cancelled" if a.cancelled else "")
    if a.chosen_is_best is None:
        verdict = "the chosen shape was not audited"
    elif a.chosen_is_best:
        verdict = "the chosen shape was the best"
    else:
        best = doc.candidate(a.best_index)
        if best is None:
            raise DamagedFile(f"search.json's audit: best_index {a.best_index} is no candidate")
        verdict = (f"the chosen shape was not the best: {a.gap_nats or 0.0:.4f} nats behind rank "
                   f"{best.rank} ({best.need_shape().label})")
        if a.noise_nats is not None and (a.gap_nats or 0.0) <= a.noise_nats:
            verdict += ", within the audit's own noise"
    seeds = f" x {a.seeds} seeds" if a.seeds > 1 else ""
    repeat = ""
    if a.seeds > 1:
        repeat = (f"; the audit agrees with itself at {rho(a.spearman_repeat)} across seeds (a shape's loss "
                  f"moved up to {a.noise_nats or 0.0:.4f} nats)")
    scored_on = ""
    if a.spearman_score_validation is not None:  # judged on test: how the order held on the data it scored on
        scored_on = f" (on the validation split it scored on: score {rho(a.spearman_score_validation)})"
    return (f"audit ({done} distilled {a.steps} steps each{seeds}): Spearman with the final "
            f"{a.split or 'validation'} loss: "
            f"screen {rho(a.spearman_screen)}, score {rho(a.spearman_score)}{scored_on}; {verdict}{repeat}")

