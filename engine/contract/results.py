"""eval/results.json: the one reader (for `compare` and the TUI) and the one perplexity rule.

Written by engine/evaluation/stage_body.py; the shape (see that module and the README):

    {"models": {"<model>": {"params": N, "path": "...", "tokens_per_s": x,
                            "splits": {"<split>": {"loss": l, "perplexity": p, "tokens": n}}, ...}},
     "seq_length": T, "updated_at": "..."}

The reader takes only that shape; a model entry or a split that is not a JSON object is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.contract.files import read_json

MAX_LOG_PPL = 700.0  # exp(700) ~ 1e304: still a finite float, so JSON and tables hold it


def perplexity(loss: float) -> float:
    """exp(loss), the loss capped at MAX_LOG_PPL so that a diverged model gives a finite number."""
    return math.exp(min(float(loss), MAX_LOG_PPL))


def split_entry(loss: float, tokens: int) -> dict[str, Any]:
    """One split of a model's entry, as the eval stage writes it."""
    return {"loss": loss, "perplexity": perplexity(loss), "tokens": tokens}


@dataclass(frozen=True)
class SplitResult:
    loss: float
    perplexity: float
    tokens: int | None = None


@dataclass(frozen=True)
class ModelResult:
    params: int | None = None
    tokens_per_s: float | None = None
    splits: dict[str, SplitResult] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # the whole entry (tasks, speed, samples, ...)

    @property
    def validation(self) -> SplitResult | None:
        return self.splits.get("validation")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _split(m: Any) -> SplitResult | None:
    if not isinstance(m, dict) or _num(m.get("loss")) is None:
        return None
    loss = float(m["loss"])
    ppl = _num(m.get("perplexity"))
    tokens = m.get("tokens")
    return SplitResult(loss, perplexity(loss) if ppl is None else ppl,
                       tokens if isinstance(tokens, int) else None)


def read_results(path: str | Path) -> dict[str, ModelResult]:
    """{model name: ModelResult} from eval/results.json, in the file's (pipeline) order; {} when
    the file is missing or unreadable."""
    doc = read_json(path) or {}
    models = doc.get("models")
    out: dict[str, ModelResult] = {}
    if not isinstance(models, dict):
        return out
    for name, entry in models.items():
        if not isinstance(entry, dict):
            continue
        splits = entry.get("splits") if isinstance(entry.get("splits"), dict) else {}
        params = entry.get("params")
        out[str(name)] = ModelResult(
            params=params if isinstance(params, int) and not isinstance(params, bool) else None,
            tokens_per_s=_num(entry.get("tokens_per_s")),
            splits={s: r for s, m in splits.items() for r in [_split(m)] if r is not None},
            raw=entry)
    return out
