"""What score = "distill-kd" would have given on audits already run (issue 23), read off their logs.

An audited candidate is distilled with the student's full [distill] recipe on the distill stage's own
windows, and its log line gives the run's loss at every step. "distill-kd" runs exactly the first
`score_steps` of that run and scores the mean loss of the last fifth of them, so each audit's log holds the
score each candidate would have got, for any number of steps. This prints, per log, the Spearman correlation
of that figure with the audit's final losses (lower = better for both), for a grid of steps and windows, and
the shape it would pick. Rankings only: these are the audits' runs, not a search scored this way.

    python3 benchmarks/smollm2/kd_from_audit_logs.py benchmarks/smollm2/h100_heldout/search-stdout.log \\
        benchmarks/smollm2/h100_heldout/searchloss-stdout.log benchmarks/smollm2/h100_audit_noise/prune-search.log
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.config.prune_schema import score_window  # noqa: E402
from engine.search.audit import spearman  # noqa: E402

STEP = re.compile(r"audit \d+/\d+ (.+?): step (\d+)/(\d+) loss ([-\d.naif]+)")
FINAL = re.compile(r"audit \d+/\d+ (.+?): final \w+ loss ([\d.]+)")


def read_log(path: Path) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """(candidate -> {step: loss}, candidate -> final loss) from a prune stage's log (log_interval = 1)."""
    curves: dict[str, dict[int, float]] = {}
    final: dict[str, float] = {}
    for line in path.read_text().splitlines():
        if m := STEP.search(line):
            curves.setdefault(m[1], {})[int(m[2])] = float(m[4])
        elif m := FINAL.search(line):
            final[m[1]] = float(m[2])
    return curves, final


def kd_score(curve: dict[int, float], steps: int) -> float:
    window = score_window(steps)
    return sum(curve[s] for s in range(steps - window + 1, steps + 1)) / window


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logs", nargs="+", type=Path)
    ap.add_argument("--steps", default="10,20,30,40,50,60,80,100,150")
    a = ap.parse_args()
    grid = [int(x) for x in a.steps.split(",")]
    for path in a.logs:
        curves, final = read_log(path)
        names = [n for n in final if n in curves]
        if len(names) < 3:
            print(f"{path}: {len(names)} audited candidates with a per-step log; need 3 or more")
            continue
        best = min(names, key=final.get)
        print(f"{path}: {len(names)} candidates; best after the full run {best} ({final[best]:.4f})")
        for steps in grid:
            if any(steps not in curves[n] for n in names):
                continue
            scores = {n: kd_score(curves[n], steps) for n in names}
            pick = min(names, key=scores.get)
            rho = spearman([scores[n] for n in names], [final[n] for n in names])
            print(f"  {steps:4d} steps (last {score_window(steps)}): Spearman {rho:+.2f}; picks {pick}, "
                  f"{final[pick] - final[best]:.4f} nats behind the best")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
