"""How repeatable is the search audit itself (issue 23)? For audited search.json files that distilled some of
the same shapes, each shape's final test loss in each, and the Spearman correlation of every pair of audits
over the shapes both distilled: the ceiling that a search score's Spearman with one audit can reach.

    python3 benchmarks/smollm2/audit_repeat.py benchmarks/smollm2/h100_audit_noise/search-*.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.smollm2.score_vs_audit import shape_key  # noqa: E402
from engine.search.audit import spearman  # noqa: E402


def audited(path: Path) -> dict[tuple, float]:
    """Shape (layers, hidden, ffn) -> its final test loss in this audit."""
    doc = json.loads(path.read_text())
    shapes = [shape_key(c) for c in doc["candidates"]]
    return {shapes[c["index"]]: c["final_loss"] for c in doc["audit"]["candidates"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("searches", nargs="+", type=Path, help="audited search.json files")
    args = ap.parse_args()
    runs = {p.stem: audited(p) for p in args.searches}
    shapes = sorted(set().union(*runs.values()))
    print("shape            " + "".join(f"{name:>22}" for name in runs))
    for s in shapes:
        print(f"{s[0]}L h{s[1]} ffn{s[2]:<5}" + "".join(f"{r[s]:>22.4f}" if s in r else f"{'-':>22}"
                                                       for r in runs.values()))
    for (a, ra), (b, rb) in itertools.combinations(runs.items(), 2):
        common = [s for s in shapes if s in ra and s in rb]
        if len(common) < 3:
            continue
        rho = spearman([ra[s] for s in common], [rb[s] for s in common])
        gaps = sorted(abs(ra[s] - rb[s]) for s in common)
        print(f"{a} vs {b}: {len(common)} shapes, Spearman {rho:+.2f}; the same shape moved by "
              f"{gaps[0]:.4f}-{gaps[-1]:.4f} nats")


if __name__ == "__main__":
    main()
