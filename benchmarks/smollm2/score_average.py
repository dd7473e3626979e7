"""What `score_seeds` would buy, from scorings already run (issue 23): average k of the given distill-scored
search.json files' scores per shape (every k-subset), rank as the distill score alone and as "distill+loss",
and report the mean and the worst Spearman with the audits' mean final test loss, over the shapes every file
scored and an audit distilled.

    python3 benchmarks/smollm2/score_average.py SCORED_SEARCH.json... --audit AUDIT_SEARCH.json...
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from score_vs_audit import DISTILL_LOSS, searches_and_audits, shape_key  # noqa: E402

from engine.search.audit import spearman  # noqa: E402


def main() -> None:
    scorings, final = searches_and_audits(__doc__)
    scores, loss = [], {}
    for path in scorings:
        cands = json.loads(path.read_text())["candidates"]
        scores.append({shape_key(c): c["score"] for c in cands if c.get("score") is not None})
        loss.update({shape_key(c): c["loss"] for c in cands if c.get("loss") is not None})
    shapes = sorted(set(final).intersection(*scores))
    finals = [final[s] for s in shapes]
    print(f"{len(shapes)} shapes scored by all {len(scores)} files and audited")
    for k in range(1, len(scores) + 1):
        alone, both = [], []
        for subset in itertools.combinations(scores, k):
            mean = [statistics.mean(sc[s] for sc in subset) for s in shapes]
            alone.append(spearman(mean, finals))
            # as a distill+loss search ranks (summed ranks, ties to the lower loss)
            order = DISTILL_LOSS.ranked(dict(zip(shapes, mean, strict=True)), loss)
            both.append(spearman(list(range(len(order))), [final[s] for s in order]))
        print(f"  mean of {k}: distill alone {statistics.mean(alone):+.2f} (worst {min(alone):+.2f}), "
              f"distill+loss {statistics.mean(both):+.2f} (worst {min(both):+.2f}) over {len(alone)} subsets")


if __name__ == "__main__":
    main()
