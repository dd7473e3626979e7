"""The audit of a search (`audit = N`): did its ranking hold after the real distillation?

The N best-scored candidates are each distilled with the student's full [distill] recipe
(engine/prune/audit_part.py); this module turns their final held-out losses (the test split when there is one) into search.json's
"audit" object. Torch-free; the line `compare`, the log and the TUI show is engine/contract/search_audit.py.

    "audit": {"steps": 30, "requested": 3, "done": 3, "cancelled": false, "seconds": 41.2,
              "candidates": [{"index": 7, "rank": 1, "screen_loss": 4.1, "score": 3.9,
                              "final_loss": 3.2, "final_rank": 2, "seconds": 13.1}, ...],
              "spearman_screen": 0.5, "spearman_score": 1.0,
              "chosen_is_best": false, "best_index": 3, "gap_nats": 0.012,
              "seeds": 2, "spearman_repeat": 0.9, "noise_nats": 0.011,   # with audit_seeds = 2
              "spearman_score_validation": 0.93}   # judged on the test split: also each "validation_loss"

With `audit_seeds` = S > 1 each candidate is distilled S times ([distill] seed, seed + 1, ...; other data
orders): its "final_loss" is the mean and "final_losses" the S values; "spearman_repeat" is the mean Spearman of
one seed's final losses with another's (how well the audit agrees with itself: the most a search score can be
expected to reach) and "noise_nats" the largest spread of a candidate's S losses.

Judged on the test split, each audited candidate also gets its final loss on the validation split the search
screened and scored on ("validation_loss"), and "spearman_score_validation" ranks the search's order against
it: a score that ranks the validation split well and the test split badly optimizes the wrong data (make the
validation split stand for the target), where one that ranks both badly is a weak score. On SmolLM2-135M the
distill score ranked the shapes at +0.07 against WikiText-2 and +0.93 on WikiText-2 itself
(benchmarks/RESULTS.md).

spearman_*: the Spearman correlation over the audited candidates of the screen loss, and of the
search's ranking by its full score (its "rank": a task's higher-is-better score counts the right way,
and "distill+loss" by its summed ranks), with the final held-out loss, so +1 always means "ranked
them exactly as the distillation did". None with fewer than two candidates or
a constant column. gap_nats: the chosen candidate's final loss minus the best final loss (0 when the
chosen one was best).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from engine.stages import method_of


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties given the mean of the ranks they span (as scipy.stats.rankdata)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            out[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: Pearson's correlation of the (tie-averaged) ranks; None when undefined."""
    if len(x) != len(y):
        raise ValueError("spearman: the two columns differ in length")
    if len(x) < 2:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def audit_summary(doc: dict[str, Any], final: dict[int, float], seconds: dict[int, float], steps: int,
                  requested: int, cancelled: bool = False, split: str = "validation",
                  repeats: dict[int, list[float]] | None = None,
                  validation: dict[int, float] | None = None) -> dict[str, Any]:
    """search.json's "audit" from `doc` (its candidates) and the audited candidates' final losses on the
    held-out `split` (`final`: candidate index -> loss, the ones distilled so far; with audit_seeds,
    `repeats`: index -> its loss per seed, and `final` their means). `validation`: index -> the final loss on
    the validation split the search scored on, when the audit judged on the test split."""
    cands = doc["candidates"]
    audited = sorted(final, key=lambda i: cands[i]["rank"])
    losses = [final[i] for i in audited]
    by_final = {i: r + 1 for r, i in enumerate(sorted(audited, key=lambda i: (final[i], i)))}
    screen = [cands[i].get("screen_loss") for i in audited]
    score = [cands[i].get("score") for i in audited]
    rank = [cands[i]["rank"] for i in audited]  # the search's order: what it chose by
    chosen = next((i for i in audited if cands[i].get("chosen")), None)
    best = min(audited, key=lambda i: (final[i], i)) if audited else None
    seeds = len(next(iter(repeats.values()))) if repeats else 1
    out = {
        "steps": steps, "requested": requested, "done": len(audited), "cancelled": cancelled,
        "seconds": round(sum(seconds.values()), 3), "split": split,
        "candidates": [{"index": i, "rank": cands[i]["rank"], "screen_loss": cands[i].get("screen_loss"),
                        "score": cands[i].get("score"), "final_loss": final[i], "final_rank": by_final[i],
                        "seconds": round(seconds.get(i, 0.0), 3)} for i in audited],
        "spearman_screen": spearman(screen, losses) if None not in screen else None,
        "spearman_score": spearman(rank, losses) if None not in score else None,
        "chosen_is_best": None if chosen is None or best is None else final[chosen] <= final[best],
        "best_index": best,
        "gap_nats": None if chosen is None or best is None else final[chosen] - final[best],
    }
    if validation is not None:
        for c in out["candidates"]:
            c["validation_loss"] = validation[c["index"]]
        out["spearman_score_validation"] = spearman(rank, [validation[i] for i in audited]) if (
            None not in score) else None
    if seeds > 1:
        for c in out["candidates"]:
            c["final_losses"] = list(repeats[c["index"]])
        out.update(seeds=seeds, spearman_repeat=repeat_spearman([repeats[i] for i in audited]),
                   noise_nats=max(max(repeats[i]) - min(repeats[i]) for i in audited))
    return out


def repeat_spearman(losses: list[list[float]]) -> float | None:
    """The mean Spearman, over every pair of seeds, of one seed's final losses with the other's (`losses`: a
    candidate's loss per seed, for each candidate); None with fewer than two candidates or a constant column."""
    seeds = len(losses[0]) if losses else 0
    rhos = [spearman([c[a] for c in losses], [c[b] for c in losses])
            for a in range(seeds) for b in range(a + 1, seeds)]
    rhos = [r for r in rhos if r is not None]
    return sum(rhos) / len(rhos) if rhos else None


def check_lines(exp: Any) -> list[str]:
    """What `check` says of each audited search: the extra distillations, their steps against the
    distill stage's (which may use several GPUs; the prune stage has one), and that the prune stage's memory
    peak becomes a one-device distillation's while it audits (engine/resources/footprints.py PRUNE)."""
    out = []
    for p in exp.prune:
        if not method_of(p.method).searches or not p.audit:
            continue
        steps = exp.distill_for(p.name).steps
        runs = p.audit * p.audit_seeds
        seeds = f", {p.audit_seeds} times each (seeds)" if p.audit_seeds > 1 else ""
        out.append(f"  audit of prune-{p.name}: after the search, the {p.audit} best-scored candidates are each distilled "
                   f"with the [distill] recipe on the same tokens{seeds}: {runs} x {steps} = {runs * steps} training "
                   f"steps in the prune stage, on its one device (distill-{p.name} runs {steps}, on every GPU of its "
                   "launch), one candidate at a time beside the teacher: the stage's memory peak is then a "
                   "one-device distillation's")
    return out
