"""Budgets on measured speed: `target_decode_ms` and `target_prefill_tokens_per_s` of a search. Torch-free.

The budget itself (targets, lengths, their defaults) is engine.config.speed_target.SpeedBudget, which
`check` reads too; this module is the search's side: the cache, the cost model's fit, the selection.

A speed target narrows the candidates of a parameter or memory target (budgets combine: a shape
must meet both). Speed is measured on the prune stage's own device, at one batch size and one
prompt and generation length (the [[prune]] table's speed_* keys, else [eval]'s, else the eval
stage's defaults for the device), the way the eval stage measures it (engine.evaluation.speed:
round robin, until the spread is small or the time cap is hit).

A shape's speed does not depend on its weights. So:
1. `speed_fit_shapes` candidates, spread from the deepest to the widest, are timed with random
   weights in one round robin; every fourth (from the third) is held out, the rest fit a cost model
   per phase (engine.search.cost_model); its error on the held-out shapes is logged. Candidates an
   earlier search on this device timed are read from the cache and judged by those timings.
2. Every candidate is predicted; those predicted to miss the budget by more than that error (the
   slack: the largest held-out error, at most MAX_SLACK) are dropped before the screen. A timed
   candidate is judged by its timing, never by the model.
3. The finalists (the best of the screen, in screen order, top_k at a time) are timed for real and
   only those that meet the budget are scored.

Timings are cached per device, dtype, attention, settings and shape in one JSON file (cache_path():
$SLIMLAB_SPEED_CACHE, else $XDG_CACHE_HOME/slimlab/speed.json, else ~/.cache/slimlab/speed.json),
written atomically (a temp file, then a rename), so a second search on the same device times nothing.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.config.shape import Shape
from engine.config.speed_target import SpeedBudget, speed_budget_for
from engine.contract.files import read_json, write_json
from engine.errors import UserError
from engine.search.cost_model import CostModel, error_summary, fit, relative_errors
from engine.shapes.candidates import SearchSpace, candidate_label, evenly_spaced

__all__ = ["SpeedBudget", "SpeedCache", "SpeedSearch", "cache_path", "speed_budget_for", "timing_key"]

CACHE_ENV = "SLIMLAB_SPEED_CACHE"
CACHE_VERSION = 1
MAX_SLACK = 0.5  # a cost model off by more than this keeps everything within 1.5x of the budget
HELD_OUT_EVERY = 4  # of the timed shapes, every 4th (from the 3rd) is held out of the fit

Entry = dict[str, Any]  # one timing: decode_ms, prefill_tokens_per_s, spreads, repeats, under_load, ...
Measure = Callable[[list[Shape]], list[Entry]]  # time shapes together (round robin), in order


# ---- the cache ---------------------------------------------------------------------------------


def cache_path() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "slimlab" / "speed.json"


def timing_key(where: dict[str, Any], s: Shape) -> str:
    """One timing's key: the device, dtype, attention and settings (`where`) and every size of the shape."""
    shape = {"model_type": s.model_type, "vocab": s.vocab_size, "layers": s.num_layers, "hidden": s.hidden_size,
             "ffn": s.intermediate_size, "heads": s.num_heads, "kv": s.num_kv_heads, "head_dim": s.head_dim,
             "tied": s.tied, "bias": [s.qkv_bias, s.o_bias, s.mlp_bias], "qk_norm": s.qk_norm}
    return json.dumps({**where, **shape}, sort_keys=True)


class SpeedCache:
    """{timing_key: Entry} in one JSON file; save() merges with what another search wrote meanwhile."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, Entry] = self._read()

    def _read(self) -> dict[str, Entry]:
        doc = read_json(self.path)
        ok = isinstance(doc, dict) and doc.get("version") == CACHE_VERSION and isinstance(doc.get("timings"), dict)
        return dict(doc["timings"]) if ok else {}

    def save(self, new: dict[str, Entry]) -> None:
        self.entries = {**self._read(), **self.entries, **new}
        write_json(self.path, {"version": CACHE_VERSION, "timings": self.entries})


# ---- the search's side -------------------------------------------------------------------------


def _seconds(e: Entry, phase: str, settings: dict[str, Any]) -> float:
    """A timing's seconds of one decode step, or of the prefill of the prompt batch."""
    if phase == "decode":
        return e["decode_ms"] / 1000.0
    return settings["batch_sizes"][0] * settings["prompt_tokens"] / e["prefill_tokens_per_s"]


def _entry(models: dict[str, CostModel], s: Shape, settings: dict[str, Any]) -> Entry:
    """The predicted figures of shape `s`."""
    dec, pre = models["decode"].predict(s), models["prefill"].predict(s)
    tokens = settings["batch_sizes"][0] * settings["prompt_tokens"]
    return {"decode_ms": 1000.0 * dec if dec > 0 else 0.0, "prefill_tokens_per_s": tokens / pre if pre > 0 else math.inf}


def _num(x: float, digits: int) -> float | None:
    """A figure for search.json: rounded, None where not finite (a model with no term for it: JSON has no inf)."""
    return round(x, digits) if math.isfinite(x) else None


class SpeedSearch:
    """One search's speed budget: narrow() before the screen, finalists() after it, annotate() search.json.

    `measure` times shapes on the device (engine.search.speed_timing.shape_timer; tests pass their
    own); `where` names the device, dtype, attention and lengths of the timings (their cache key);
    `key` names the [[prune]] table in error lines."""

    def __init__(self, budget: SpeedBudget, device_type: str, where: dict[str, Any], measure: Measure,
                 cache: SpeedCache, log: Callable[[str], None], key: str = "prune"):
        self.budget, self.device_type, self.where, self._measure = budget, device_type, where, measure
        self.settings = budget.settings(device_type)
        self.cache, self.log, self.key = cache, log, key
        self.timed: dict[Shape, Entry] = {}
        self.roles: dict[Shape, str] = {}  # "fit" | "held-out" | "finalist" | "cached" (timed by an earlier search)
        self.predicted: dict[Shape, Entry] = {}
        self.models: dict[str, CostModel] = {}
        self.slack = MAX_SLACK
        self.space: SearchSpace | None = None
        self.in_band = 0
        self.from_cache = 0
        self.seconds = 0.0

    # -- timing ---------------------------------------------------------------------------------

    def time_shapes(self, shapes: Sequence[Shape], role: str) -> None:
        """Timings of `shapes`: from the cache, else measured together (and cached)."""
        todo = []
        for s in shapes:
            self.roles.setdefault(s, role)
            hit = self.cache.entries.get(timing_key(self.where, s))
            if s in self.timed:
                continue
            if hit is not None:
                self.timed[s] = hit
                self.from_cache += 1
            else:
                todo.append(s)
        if not todo:
            return
        t0 = time.perf_counter()
        got = self._measure(todo)
        self.seconds += time.perf_counter() - t0
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        new = {}
        for s, e in zip(todo, got, strict=True):
            self.timed[s] = {**e, "measured_at": stamp}
            new[timing_key(self.where, s)] = self.timed[s]
        self.cache.save(new)

    # -- before the screen ----------------------------------------------------------------------

    def narrow(self, space: SearchSpace) -> SearchSpace:
        """The candidates of `space` that meet the speed budget (timed, or predicted within the slack)."""
        cands = space.candidates
        self.in_band = len(cands)
        sample = [cands[i].shape for i in evenly_spaced(range(len(cands)), self.budget.fit_shapes)]
        held = sample[2::HELD_OUT_EVERY] if len(sample) > 2 else []
        fit_on = [s for s in sample if s not in held]
        self.roles.update({s: "held-out" for s in held if s not in self.roles})
        self.time_shapes(sample, "fit")  # in one round robin: a burst of load hits fit and held-out alike
        for phase in ("decode", "prefill"):
            self.models[phase] = fit(fit_on, [_seconds(self.timed[s], phase, self.settings) for s in fit_on],
                                     phase, self.settings["prompt_tokens"], self.settings["new_tokens"])
        self.predicted = {c.shape: _entry(self.models, c.shape, self.settings) for c in cands}
        for c in cands:  # timed by an earlier search on this device: judged by that timing, at no cost
            hit = self.cache.entries.get(timing_key(self.where, c.shape))
            if hit is not None and c.shape not in self.timed:
                self.timed[c.shape], self.roles[c.shape] = hit, "cached"
                self.from_cache += 1
        errors = self.errors(held)
        worst = max((e["max"] for e in errors.values() if e), default=None)
        self.slack = min(MAX_SLACK, worst) if worst is not None else MAX_SLACK
        kept = [c for c in cands if (self.budget.meets(self.timed[c.shape]) if c.shape in self.timed
                                     else self.budget.meets(self.predicted[c.shape], self.slack))]
        self.log(f"speed budget: {self.budget.describe()} ({self.where['device']}); timed {len(fit_on)} shapes "
                 f"with random weights to fit the cost model, {len(held)} held out ({self.from_cache} from the "
                 f"cache {self.cache.path}, {self.seconds:.1f}s timing); {self.error_text(errors)}")
        if not kept:
            fastest = min((self.timed.get(c.shape) or self.predicted[c.shape] for c in cands),
                          key=lambda e: e["decode_ms"])
            raise UserError(f"{self.key}.{self._target_key()}: none of the {len(cands)} candidates meets "
                            f"{self.budget.targets()} on {self.where['device']} (the fastest: "
                            f"{fastest['decode_ms']:.3g} ms/token, {fastest['prefill_tokens_per_s']:,.0f} prefill "
                            "tokens/s); relax the speed target or give a smaller target_params / target_memory_gb")
        self.log(f"speed budget: {len(kept)} of {len(cands)} candidates kept (predicted within "
                 f"{self.slack:.0%} of the budget, or timed within it)")
        self.space = replace(space, candidates=tuple(kept),
                             screened=evenly_spaced(range(len(kept)), space.screen_max))
        return self.space

    def _target_key(self) -> str:
        return "target_decode_ms" if self.budget.decode_ms is not None else "target_prefill_tokens_per_s"

    # -- after the screen -----------------------------------------------------------------------

    def finalists(self, order: Sequence[int], k: int) -> list[int]:
        """The first `k` of `order` (candidate indices, best screened first) timed within the budget,
        timing them k at a time (round robin within each group)."""
        assert self.space is not None, "narrow() first"
        chosen: list[int] = []
        pos = 0
        while len(chosen) < k and pos < len(order):
            group = list(order[pos:pos + k - len(chosen)])
            pos += len(group)
            self.time_shapes([self.space.candidates[i].shape for i in group], "finalist")
            chosen += [i for i in group if self.budget.meets(self.timed[self.space.candidates[i].shape])]
        tried = [self.space.candidates[i].shape for i in order[:pos]]
        self.log(f"speed budget: timed the best-screened for real: {len(chosen)} of {len(tried)} meet it; "
                 f"{self.error_text(self.errors())}")
        if not chosen:
            raise UserError(f"{self.key}.{self._target_key()}: no candidate timed on {self.where['device']} meets "
                            f"{self.budget.targets()} (tried {len(tried)}, best screened first); relax the speed "
                            "target or give a smaller target_params / target_memory_gb")
        return chosen

    # -- the cost model's error -----------------------------------------------------------------

    def errors(self, shapes: Sequence[Shape] | None = None) -> dict[str, dict[str, Any] | None]:
        """Per phase, the model's relative error on timed shapes it was not fitted to (default: all of them)."""
        judged = [s for s in (self.timed if shapes is None else shapes) if self.roles.get(s) != "fit"]
        return {phase: error_summary(relative_errors(
            self.models[phase], judged, [_seconds(self.timed[s], phase, self.settings) for s in judged]))
            for phase in ("decode", "prefill")}

    @staticmethod
    def error_text(errors: dict[str, dict[str, Any] | None]) -> str:
        parts = [f"{phase} median {e['median']:.1%}, max {e['max']:.1%} over {e['shapes']} shapes"
                 for phase, e in errors.items() if e]
        return "cost model error on shapes it was not fitted to: " + ("; ".join(parts) if parts else "none timed")

    # -- search.json ----------------------------------------------------------------------------

    def annotate(self, doc: dict[str, Any]) -> None:
        """Each candidate's timed and predicted speed, and the "speed" section, into search.json `doc`."""
        assert self.space is not None
        for c, row in zip(self.space.candidates, doc["candidates"], strict=True):
            e, p = self.timed.get(c.shape), self.predicted[c.shape]
            row.update(decode_ms=e["decode_ms"] if e else None,
                       prefill_tokens_per_s=e["prefill_tokens_per_s"] if e else None,
                       predicted_decode_ms=_num(p["decode_ms"], 4),
                       predicted_prefill_tokens_per_s=_num(p["prefill_tokens_per_s"], 2))
        doc["speed"] = {
            "target": self.budget.to_json(self.device_type), "device": self.where["device"],
            "dtype": self.where["dtype"], "cache": str(self.cache.path), "candidates_in_band": self.in_band,
            "kept": len(self.space.candidates), "slack": round(self.slack, 4), "from_cache": self.from_cache,
            "seconds": round(self.seconds, 3), "error": self.errors(),
            "cost_model": {phase: m.to_json() for phase, m in self.models.items()},
            "timed": [self._timed_row(s, e) for s, e in self.timed.items()]}

    def _timed_row(self, s: Shape, e: Entry) -> dict[str, Any]:
        p = self.predicted.get(s)
        return {"shape": candidate_label(s), "role": self.roles[s], **e,
                "predicted_decode_ms": _num(p["decode_ms"], 4) if p else None,
                "predicted_prefill_tokens_per_s": _num(p["prefill_tokens_per_s"], 2) if p else None,
                "meets": self.budget.meets(e)}
