"""The Pareto frontier of a search's measured candidates: quality (the search's score) against the
costs of serving the student: parameters, memory and, where a candidate was timed, its speed.

A candidate is on the frontier when no other measured candidate is at least as good on quality and
on every cost and better on one. A cost a candidate lacks (speed is measured for a few shapes only)
is unknown, not zero: a candidate can only be beaten on the axes it has by one measured there too,
so a timed shape is never pushed off by an untimed one. Equal candidates (same quality and costs)
stay on together: neither beats the other.

Pure Python over search.json's candidate dicts (no torch): search_document writes the frontier
(`frontier`, a dict); the reader (engine.contract.search_doc) reads it into a `Frontier`, or works it
out the same way from a search.json written before it existed; a SearchDoc's `frontier` is the one to use
(engine/contract/search_doc.py picks it when it reads the file).

    "frontier": {"quality": "score", "higher_is_better": false, "axes": ["params", "memory_gb"],
                 "measured": 10, "points": [7, 3, 1], "chosen": 1, "chosen_on_frontier": true}

`points`: indices into "candidates", fewest parameters first; `axes`: the costs it was taken over
(those at least one measured candidate has); `measured`: the candidates with a quality. A speed axis
is read from the candidate's "decode_ms" / "prefill_tokens_per_s", or its "speed" table's: timings
only (engine.search.speed_budget's finalists); a cost model's prediction belongs under another key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Axis:
    key: str  # the candidate's field (or its "speed" table's)
    label: str
    lower_is_better: bool = True


# the costs a frontier may be taken over, in the order tables show them
COST_AXES = (Axis("params", "params"), Axis("memory_gb", "memory GiB"),
             Axis("decode_ms", "decode ms/token"), Axis("prefill_tokens_per_s", "prefill tokens/s", False))
BY_KEY = {a.key: a for a in COST_AXES}


def value(c: dict[str, Any], key: str) -> float | None:
    """A candidate's finite number under `key` (or under its "speed" table), else None."""
    v = c.get(key)
    if v is None and isinstance(c.get("speed"), dict):
        v = c["speed"].get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def dominates(a: dict[str, float], b: dict[str, float]) -> bool:
    """a beats b: measured on every axis b has, no worse on any, better on one (lower is better)."""
    return all(k in a and a[k] <= v for k, v in b.items()) and any(a[k] < v for k, v in b.items())


def pareto(points: dict[int, dict[str, float]]) -> list[int]:
    """The keys of the points no other point dominates (values oriented: lower is better)."""
    return [i for i, p in points.items() if not any(j != i and dominates(q, p) for j, q in points.items())]


def frontier(candidates: list[dict[str, Any]], higher_is_better: bool, quality: str = "score") -> dict[str, Any]:
    """The frontier document of search.json's candidate list (see the module's docstring)."""
    measured = {i: c for i, c in enumerate(candidates) if isinstance(c, dict) and value(c, quality) is not None}
    axes = [a for a in COST_AXES if any(value(c, a.key) is not None for c in measured.values())]
    oriented: dict[int, dict[str, float]] = {}
    for i, c in measured.items():
        q = value(c, quality)
        assert q is not None
        point = {quality: -q if higher_is_better else q}
        for a in axes:
            v = value(c, a.key)
            if v is not None:
                point[a.key] = v if a.lower_is_better else -v
        oriented[i] = point
    first = axes[0].key if axes else quality
    points = sorted(pareto(oriented), key=lambda i: (oriented[i].get(first, math.inf), i))
    chosen = next((i for i, c in measured.items() if c.get("chosen") is True), None)
    return {"quality": quality, "higher_is_better": higher_is_better, "axes": [a.key for a in axes],
            "measured": len(measured), "points": points, "chosen": chosen,
            "chosen_on_frontier": chosen is not None and chosen in points}


@dataclass(frozen=True)
class Frontier:
    """A search's frontier, read (engine.contract.search_doc): the document above, typed."""

    points: tuple[int, ...]  # candidate indices, fewest parameters first
    axes: tuple[str, ...]  # the cost keys it was taken over
    quality: str = "score"
    higher_is_better: bool = False
    measured: int | None = None  # the candidates with a quality; None: not written
    chosen: int | None = None  # the chosen candidate's index; None: none, or not an index of the list
    chosen_on_frontier: bool = False

    @classmethod
    def of(cls, d: dict[str, Any], n: int) -> Frontier:
        """The frontier document `d` (its points already checked) of a list of `n` candidates."""
        chosen, measured = d.get("chosen"), d.get("measured")
        return cls(tuple(d["points"]), tuple(str(a) for a in d["axes"]), str(d.get("quality", "score")),
                   d.get("higher_is_better") is True,
                   measured if isinstance(measured, int) and not isinstance(measured, bool) else None,
                   chosen if isinstance(chosen, int) and not isinstance(chosen, bool) and 0 <= chosen < n else None,
                   d.get("chosen_on_frontier") is True)
