"""Compare screen logic: per-stage configs, their differing keys, and eval/results.json rows."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from engine.contract import RunLayout
from engine.contract.results import read_results
from engine.evaluation.scores import decode_speed, task_scores

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
        return tomllib.loads(RunLayout(run_dir).experiment_file.read_text(encoding="utf-8"))
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


def results_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per model of eval/results.json: {"run", "model", "params", "<split>.loss",
    "<split>.perplexity"}, read through engine.contract.results."""
    rows = []
    for name, res in read_results(RunLayout(run_dir).results_file).items():
        row: dict[str, Any] = {"run": run_dir.name, "model": name, "params": res.params}
        for split, m in res.splits.items():
            row[f"{split}.loss"] = m.loss
            row[f"{split}.perplexity"] = m.perplexity
        for task, score in task_scores(res.raw).items():  # "task.<name>": the task's headline score
            row[f"task.{task}"] = score
        row["decode_tokens_per_s"] = decode_speed(res.raw)
        speed = res.raw.get("speed") if isinstance(res.raw.get("speed"), dict) else {}
        row["speedup"] = speed.get("speedup_vs_teacher")
        rows.append(row)
    return rows
