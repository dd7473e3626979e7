"""Compare screen logic: per-stage configs, their differing keys, and eval/results.json rows."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from engine.contract import read_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists of tables become a.0.b (scalars lists stay whole)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def read_experiment(run_dir: Path) -> dict[str, Any]:
    try:
        return tomllib.loads((run_dir / "experiment.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


def stage_config(raw: dict[str, Any], stage: str) -> dict[str, Any]:
    """The keys a stage depends on, flattened; its own [[prune]] table appears as `prune.*`
    so the depth and the width student of one run can be diffed against each other."""
    kind, _, student = stage.partition("-")
    base = {k: v for k, v in raw.items() if k not in ("name", "prune", "distill", "eval", "launch", "runs_dir")}
    if kind in ("prune", "distill"):
        table = next((p for p in raw.get("prune", []) if isinstance(p, dict) and p.get("name") == student), {})
        base["prune"] = {k: v for k, v in table.items() if k != "name"}
    if kind == "distill" and isinstance(raw.get("distill"), dict):
        base["distill"] = raw["distill"]
    return flatten(base)


def config_diff(configs: dict[str, dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """[(key, [value per config])] for the keys whose values are not all equal (missing = None)."""
    labels = list(configs)
    keys = sorted({k for c in configs.values() for k in c})
    rows = []
    for key in keys:
        values = [configs[label].get(key) for label in labels]
        if any(v != values[0] for v in values[1:]):
            rows.append((key, values))
    return rows


# ---- eval/results.json -------------------------------------------------------------------

PARAM_KEYS = ("params", "num_params", "parameters", "param_count", "n_params")


def _split_metrics(entry: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per split {loss, perplexity} from a model's entry, whether splits sit at its top level
    or under a "splits"/"metrics" key."""
    out: dict[str, dict[str, float]] = {}
    for container in (entry, entry.get("splits"), entry.get("metrics")):
        if not isinstance(container, dict):
            continue
        for split, m in container.items():
            if isinstance(m, dict) and isinstance(m.get("loss"), (int, float)):
                ppl = m.get("perplexity", m.get("ppl"))
                if not isinstance(ppl, (int, float)):
                    ppl = math.exp(m["loss"]) if m["loss"] < 50 else math.inf
                out[split] = {"loss": float(m["loss"]), "perplexity": float(ppl)}
    return out


def read_results(run_dir: Path) -> list[dict[str, Any]]:
    """One row per model: {"run", "model", "params", "<split>.loss", "<split>.perplexity"}."""
    doc = read_json(run_dir / "eval" / "results.json")
    if not doc:
        return []
    models = doc.get("models", doc)
    if isinstance(models, list):  # [{"model": name, ...}]
        models = {str(m.get("model", m.get("name", i))): m for i, m in enumerate(models) if isinstance(m, dict)}
    rows = []
    for name, entry in models.items() if isinstance(models, dict) else ():
        if not isinstance(entry, dict):
            continue
        row: dict[str, Any] = {"run": run_dir.name, "model": name,
                               "params": next((entry[k] for k in PARAM_KEYS if isinstance(entry.get(k), int)), None)}
        for split, m in _split_metrics(entry).items():
            row[f"{split}.loss"] = m["loss"]
            row[f"{split}.perplexity"] = m["perplexity"]
        if row["params"] is not None or len(row) > 3:
            rows.append(row)
    return rows
