"""search.json's "audit" read for people: the line `compare`, the stage log and the TUI show (its shape
and how it is computed: engine/search/audit.py). Pure Python, torch-free: the TUI reads it through the
contract, as it reads the frontier (engine/contract/frontier.py)."""

from __future__ import annotations

from typing import Any


def audit_line(doc: dict[str, Any]) -> str | None:
    """One line for `compare` and the TUI; None when the search was not audited."""
    a = doc.get("audit")
    if not isinstance(a, dict) or not a.get("candidates"):
        return None

    def rho(v: Any) -> str:
        return f"{v:+.2f}" if isinstance(v, (int, float)) else "n/a"

    done = f"{a.get('done')} of {a.get('requested')} best-scored" + (", cancelled" if a.get("cancelled") else "")
    if a.get("chosen_is_best") is None:
        verdict = "the chosen shape was not audited"
    elif a["chosen_is_best"]:
        verdict = "the chosen shape was the best"
    else:
        best = doc["candidates"][a["best_index"]]
        verdict = (f"the chosen shape was not the best: {a.get('gap_nats', 0.0):.4f} nats behind rank "
                   f"{best.get('rank')} ({shape_label(best['shape'])})")
    return (f"audit ({done} distilled {a.get('steps')} steps each): Spearman with the final "
            f"{a.get('split') or 'validation'} loss: "
            f"screen {rho(a.get('spearman_screen'))}, score {rho(a.get('spearman_score'))}; {verdict}")


def shape_label(s: dict[str, Any]) -> str:
    """engine.shapes.candidates.candidate_label of a shape as search.json keeps it."""
    return (f"{s['num_layers']}L h{s['hidden_size']} ffn{s['ffn_hidden_size']} "
            f"{s['num_attention_heads']}/{s['num_key_value_heads']}")
