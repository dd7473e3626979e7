"""How a search's scores rank the shapes an earlier audit distilled in full (issue 23): the Spearman
correlation of each given search.json's scores (and screen losses) with the audit's final test losses,
over the candidates both have. A shape audited twice counts with the mean of its two final losses.
Lower score = better for a loss score (`higher_is_better` false), as the search itself reads it.
For a distill score it also ranks as `score = "distill+loss"` would (engine.search.scoring.Scorer:
the score's rank plus the loss-after-pruning's, over all the scored candidates), from the same file.

    python3 benchmarks/smollm2/score_vs_audit.py NEW_SEARCH.json... \\
        --audit benchmarks/smollm2/audit_h100/search-distill.json benchmarks/smollm2/audit_h100/search-loss.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.search.audit import spearman  # noqa: E402
from engine.search.scoring import Scorer  # noqa: E402

DISTILL_LOSS = Scorer("distill+loss", lambda model: 0.0)  # a distill+loss search's ranking rule (no scoring)


def final_losses(audits: list[Path]) -> dict[tuple, float]:
    """Shape (layers, hidden, ffn) -> mean final test loss over the audits that distilled it."""
    seen: dict[tuple, list[float]] = {}
    for path in audits:
        doc = json.loads(path.read_text())
        shapes = [shape_key(c) for c in doc["candidates"]]  # an audit names them by position
        for c in doc["audit"]["candidates"]:
            seen.setdefault(shapes[c["index"]], []).append(c["final_loss"])
    return {k: statistics.mean(v) for k, v in seen.items()}


def shape_key(candidate: dict) -> tuple:
    s = candidate["shape"]
    return s["num_layers"], s["hidden_size"], s["ffn_hidden_size"]


def searches_and_audits(doc: str) -> tuple[list[Path], dict[tuple, float]]:
    """The command line SEARCH.json... --audit AUDIT.json... (`doc`: the script's docstring): the searches'
    paths, and each audited shape's mean final loss."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("searches", nargs="+", type=Path)
    ap.add_argument("--audit", nargs="+", type=Path, required=True)
    a = ap.parse_args()
    return a.searches, final_losses(a.audit)


def main() -> None:
    searches, final = searches_and_audits(__doc__)
    for path in searches:
        doc = json.loads(path.read_text())
        sign = -1.0 if doc.get("higher_is_better") else 1.0  # loss-like: lower is better
        # a distill+loss search ranks by the sum of two ranks: its own `rank` is what it chose by
        key = "rank" if doc.get("score") == "distill+loss" else "score"
        rows = [(shape_key(c), c.get(key), c.get("screen_loss")) for c in doc["candidates"]]
        rows = [r for r in rows if r[0] in final and r[1] is not None]
        rows.sort(key=lambda r: final[r[0]])
        print(f"{path}: score = {doc.get('score')}, {len(rows)} scored shapes with a final loss")
        for shape, score, screen in rows:
            print(f"  {shape[0]}L h{shape[1]} ffn{shape[2]}: final {final[shape]:.4f}  {key} {score:.4f}  screen {screen:.4f}")
        finals = [final[r[0]] for r in rows]
        by_score = spearman([sign * r[1] for r in rows], finals)
        by_screen = spearman([r[2] for r in rows], finals)
        best = min(rows, key=lambda r: sign * r[1])
        print(f"  Spearman with the final loss: {key} {by_score:+.2f}, screen {by_screen:+.2f}; the score's pick "
              f"is {final[best[0]] - min(finals):.4f} nats behind the best of these shapes")
        if doc.get("score") == "distill":
            scored = {i: c for i, c in enumerate(doc["candidates"]) if c.get("score") is not None}
            order = DISTILL_LOSS.ranked(
                {i: c["score"] for i, c in scored.items()}, {i: c["loss"] for i, c in scored.items()})
            audited = [i for i in order if shape_key(scored[i]) in final]
            combined = spearman(list(range(len(audited))), [final[shape_key(scored[i])] for i in audited])
            pick = final.get(shape_key(scored[order[0]]))
            print(f"  ranked as distill+loss: Spearman {combined:+.2f}; its pick is "
                  + (f"{pick - min(finals):.4f} nats behind the best" if pick is not None else "not audited"))


if __name__ == "__main__":
    main()
