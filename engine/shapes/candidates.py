"""The shapes a search may choose, enumerated from the teacher's config alone. Torch-free.

A candidate is one value per axis: num_layers (1..teacher), hidden_size and ffn_hidden_size
(multiples of hidden_multiple / ffn_multiple, up to the teacher's), num_attention_heads and
num_key_value_heads. Axes not listed in `axes` keep the teacher's value. Every candidate passes
the very checks of a hand-written width target (engine.config.shape), so each one is a shape the
prune stage can build, and its budget metric (params or memory) lies within the tolerance.

Which candidates are scored: every one is screened first (the search, engine.prune.search_part:
its loss right after pruning on `screen_batches` batches, about a forward pass each), then the
`top_k` best of the screen get the full score. Past `screen_max` candidates, that many are
screened, spread evenly from the deepest (all layers kept, narrowest) to the shallowest (widest),
and `check` and the stage say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

from engine.config import ConfigError
from engine.config.shape import Shape, StudentShape, count_params, layer_selection, student_shape
from engine.contract import human_count
from engine.shapes.budget import Budget, budget_for

CHECK_SHOWN = 5  # candidates `check` lists


@dataclass(frozen=True)
class Candidate:
    shape: Shape
    params: int
    memory_gb: float
    metric: float  # the budget's metric (params or memory_gb)

    def shape_json(self) -> dict[str, int]:
        s = self.shape
        return {"num_layers": s.num_layers, "hidden_size": s.hidden_size, "ffn_hidden_size": s.intermediate_size,
                "num_attention_heads": s.num_heads, "num_key_value_heads": s.num_kv_heads}


@dataclass(frozen=True)
class SearchSpace:
    """A search student: its budget, every candidate within it, and the ones to screen.

    Duck-types as engine.config.shape.StudentShape for callers that only size students:
    `shape` is the candidate closest to the target.
    """

    name: str
    budget: Budget
    candidates: tuple[Candidate, ...]  # sorted: deepest first, then widest hidden, heads, ffn
    screened: tuple[int, ...]  # indices into candidates, in candidate order: all, or screen_max of them
    selection: str
    axes: tuple[str, ...]
    teacher: Shape
    method: str = "search"
    top_k: int = 10  # the best-screened candidates given the full score
    screen_batches: int = 2
    screen_max: int = 2000

    @property
    def capped(self) -> bool:
        return len(self.screened) < len(self.candidates)

    def cap_message(self) -> str:
        return (f"{len(self.candidates)} candidates, more than screen_max = {self.screen_max}: {len(self.screened)} "
                "are screened, spread evenly from the deepest to the widest; raise screen_max to screen them all, "
                "or narrow the space (larger hidden_multiple / ffn_multiple, fewer axes)")

    @property
    def shape(self) -> Shape:
        return min(self.candidates, key=lambda c: abs(c.metric - self.budget.target)).shape

    def drops_layers(self) -> bool:
        return any(c.shape.num_layers < self.teacher.num_layers for c in self.candidates)

    def student(self, i: int) -> StudentShape:
        """Candidate i as the StudentShape the prune stage builds (layers chosen by `selection`)."""
        s = self.candidates[i].shape
        drop = self.teacher.num_layers - s.num_layers
        return StudentShape(self.name, "search", s, num_drop=drop, selection=self.selection if drop else None)

    def param_range(self) -> tuple[int, int]:
        ps = [c.params for c in self.candidates]
        return min(ps), max(ps)

    def describe(self) -> str:
        lo, hi = self.param_range()
        return (f"search for {self.budget.describe()} over {', '.join(self.axes)}: {len(self.candidates)} "
                f"candidates, {human_count(lo)}..{human_count(hi)} params; screens "
                f"{'all' if not self.capped else f'{len(self.screened)} (screen_max)'} by the loss on "
                f"{self.screen_batches} batches, then scores the best {min(self.top_k, len(self.screened))}")


def _axis_values(top: int, step: int) -> list[int]:
    """Multiples of `step` up to `top`, and `top` itself (the unpruned size)."""
    return sorted({*range(step, top + 1, step), top})


def _widths(t: Shape, p: Any, where: str) -> list[Shape]:
    """Every valid (hidden, heads, kv) of the searched axes, ffn and layers still the teacher's."""
    axes = set(p.axes)
    hiddens = _axis_values(t.hidden_size, p.hidden_multiple) if "hidden_size" in axes else [None]
    heads = list(range(1, t.num_heads + 1)) if "num_attention_heads" in axes else [None]
    kvs = list(range(1, t.num_kv_heads + 1)) if "num_key_value_heads" in axes else [None]
    out: dict[tuple[int, int, int], Shape] = {}
    for h in hiddens:
        for nh in heads:
            for kv in kvs:
                q = SimpleNamespace(name=p.name, method="width", ffn_hidden_size=None, hidden_size=h,
                                    num_attention_heads=nh, num_key_value_heads=kv, num_layers=None, selection=None)
                try:
                    s = student_shape(t, q, where).shape  # the checks of a hand-written width target
                except ConfigError:
                    continue
                out[(s.hidden_size, s.num_heads, s.num_kv_heads)] = s
    return list(out.values())


def _ffn_sizes(base: Shape, budget: Budget, t: Shape, step: int) -> list[int]:
    """The ffn sizes (multiples of `step`, or the teacher's) whose metric lies within the budget.

    Every metric is linear in the ffn size (3 * hidden weights + biases per layer), so the range
    is solved for rather than scanned; the exact metric is checked again by the caller.
    """
    m0 = budget.measure(replace(base, intermediate_size=0))
    slope = budget.measure(replace(base, intermediate_size=1)) - m0
    lo = math.ceil((budget.lo - m0) / slope)
    hi = math.floor((budget.hi - m0) / slope)
    first = max(step, math.ceil(lo / step) * step)
    sizes = list(range(first, min(hi, t.intermediate_size) + 1, step))
    if lo <= t.intermediate_size <= hi:
        sizes.append(t.intermediate_size)
    return sorted(set(sizes))


def enumerate_candidates(t: Shape, p: Any, budget: Budget, where: str) -> list[Candidate]:
    """Every shape on the searched axes whose budget metric lies within the tolerance."""
    layers = range(1, t.num_layers + 1) if "num_layers" in p.axes else [t.num_layers]
    out: list[Candidate] = []
    for w in _widths(t, p, where):
        for n in layers:
            base = replace(w, num_layers=n)
            ffns = _ffn_sizes(base, budget, t, p.ffn_multiple) if "ffn_hidden_size" in p.axes \
                else [t.intermediate_size]
            for f in ffns:
                s = replace(base, intermediate_size=f)
                value = budget.measure(s)
                if s != t and budget.fits(value):
                    out.append(_candidate(s, budget, value))
    out.sort(key=lambda c: (-c.shape.num_layers, -c.shape.hidden_size, -c.shape.num_heads,
                            -c.shape.num_kv_heads, -c.shape.intermediate_size))
    return out


def _candidate(s: Shape, budget: Budget, value: float) -> Candidate:
    from engine.shapes.budget import memory_gib

    mem = memory_gib(s, budget.dtype, budget.seq_length or 0, budget.batch_size)
    return Candidate(s, count_params(s), mem, value)


def evenly_spaced(pool: Sequence[int], k: int) -> tuple[int, ...]:
    """k items of `pool`, spread evenly from its first to its last (all of it when it has k or fewer)."""
    if len(pool) <= k:
        return tuple(pool)
    if k == 1:
        return (pool[len(pool) // 2],)
    step = (len(pool) - 1) / (k - 1)  # >= 1: the k rounded positions are distinct
    return tuple(pool[round(i * step)] for i in range(k))


def search_space(t: Shape, p: Any, where: str, dtype: str, seq_length: int) -> SearchSpace:
    """Check a search [[prune]] table against the teacher; ConfigError (one line, the fix) when
    no shape meets the budget."""
    budget = budget_for(p, t, dtype, seq_length)
    key = "target_params" if budget.metric == "params" else "target_memory_gb"
    teacher_value = budget.measure(t)
    if budget.lo > teacher_value:
        unit = human_count(int(teacher_value)) + " params" if budget.metric == "params" else f"{teacher_value:.3g} GiB"
        raise ConfigError(f"{where}.{key}: {budget.describe()} is not below the teacher's {unit}; "
                          "give a smaller target")
    cands = enumerate_candidates(t, p, budget, where)
    if not cands:
        raise ConfigError(f"{where}.{key}: no shape over {', '.join(p.axes)} (hidden in steps of "
                          f"{p.hidden_multiple}, ffn in steps of {p.ffn_multiple}) meets {budget.describe()}; "
                          "raise tolerance, add axes or use smaller hidden_multiple / ffn_multiple")
    screened = evenly_spaced(range(len(cands)), p.screen_max)
    return SearchSpace(p.name, budget, tuple(cands), screened, layer_selection(p), tuple(p.axes), t,
                       top_k=p.top_k, screen_batches=p.screen_batches, screen_max=p.screen_max)


def candidate_label(s: Shape) -> str:
    return f"{s.num_layers}L h{s.hidden_size} ffn{s.intermediate_size} {s.num_heads}/{s.num_kv_heads}"
