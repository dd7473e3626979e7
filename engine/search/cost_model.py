"""A cost model of a shape's inference time, fitted to timings of a few shapes. Torch-free (numpy).

A shape's speed does not depend on its weights, only on the work per token: so the time of a phase
(one decode step, or the prefill of the prompt batch) is modelled as

    t = c0 + c1 * L + c2 * L * attention_flops + c3 * L * mlp_flops + c4 * head_flops

c0 the fixed per-token overhead (embedding, sampling, the host's own work), c1 a fixed cost per layer
(norms, residuals, kernel launches: what dominates small models on a GPU and on the CPU), then the
attention and MLP terms of each layer and the LM head, in FLOPs per token. Attention FLOPs count the
projections and the scores over the context (the prompt plus half the generation while decoding, half
the prompt in a causal prefill), so that more KV heads, heads or a longer prompt cost more.

The fit is least squares on relative error (each row divided by its time: a 10% miss on a fast
shape counts as much as on a slow one), with no negative coefficient (a term that would come out
negative is dropped and the rest refitted: with few, noisy timings a negative cost extrapolates
badly). Features are scaled to their largest value first (FLOPs and 1 differ by 10 orders of magnitude).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.config.shape import Shape

TERMS = ("overhead", "layers", "attention", "mlp", "lm_head")
PHASES = ("decode", "prefill")


def context(phase: str, prompt: int, new: int) -> float:
    """The mean number of earlier positions each new token attends to in `phase`."""
    return prompt + (new - 1) / 2 if phase == "decode" else prompt / 2


def features(s: Shape, phase: str, prompt: int, new: int) -> list[float]:
    """The terms of TERMS for shape `s` (per token; the batch and token counts are the same for every
    shape of a search, so they fold into the coefficients)."""
    d, h, k, hd = s.hidden_size, s.num_heads, s.num_kv_heads, s.head_dim
    attention = 2 * (2 * d * h * hd + 2 * d * k * hd) + 4 * h * hd * context(phase, prompt, new)
    mlp = 2 * 3 * d * s.intermediate_size
    head = 2 * d * (s.vocab_size or 0)
    return [1.0, float(s.num_layers), s.num_layers * attention, s.num_layers * mlp, float(head)]


@dataclass(frozen=True)
class CostModel:
    """Seconds of one phase as a function of the shape: coef . features(shape) (see the module doc)."""

    phase: str
    prompt: int
    new: int
    coef: tuple[float, ...]  # one per TERMS, >= 0, in seconds per (unscaled) feature unit

    def predict(self, s: Shape) -> float:
        return float(np.dot(self.coef, features(s, self.phase, self.prompt, self.new)))

    def to_json(self) -> dict[str, float]:
        return {t: c for t, c in zip(TERMS, self.coef, strict=True)}


def fit(shapes: Sequence[Shape], seconds: Sequence[float], phase: str, prompt: int, new: int) -> CostModel:
    """The non-negative least-squares fit (in relative error) of `seconds` measured on `shapes`."""
    if len(shapes) != len(seconds) or not shapes:
        raise ValueError("fit: one time per shape, and at least one shape")
    x = np.array([features(s, phase, prompt, new) for s in shapes], dtype=np.float64)
    y = np.array(seconds, dtype=np.float64)
    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    a = x / scale / y[:, None]  # relative error: (x.c - y) / y = x/y . c - 1
    active = list(range(len(TERMS)))
    coef = np.zeros(len(TERMS))
    while active:
        sol, *_ = np.linalg.lstsq(a[:, active], np.ones(len(y)), rcond=None)
        if (sol >= 0).all():
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))  # the most negative term goes; refit the others
    return CostModel(phase, prompt, new, tuple(float(c) for c in coef / scale))


def relative_errors(model: CostModel, shapes: Sequence[Shape], seconds: Sequence[float]) -> list[float]:
    """|predicted - measured| / measured of each shape."""
    return [abs(model.predict(s) - t) / t for s, t in zip(shapes, seconds, strict=True)]


def error_summary(errors: Sequence[float]) -> dict[str, float | int] | None:
    """{"shapes": n, "median": ..., "max": ...} of relative errors (None: no shape to judge by)."""
    if not errors:
        return None
    return {"shapes": len(errors), "median": round(statistics.median(errors), 4), "max": round(max(errors), 4)}
