"""Compare screen logic: per-stage configs, their differing keys, eval/results.json rows, and each
search student's Pareto frontier with the hand-made students beside it."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.data import fmt
from engine.config import ConfigError, Experiment, parse_experiment
from engine.contract import (
    AT_CHANCE,
    PRUNE,
    STUDENT_SECTIONS,
    Candidate,
    RunLayout,
    SearchDoc,
    UserError,
    method_or_none,
    student_or_none,
    student_sections,
)
from engine.contract.results import read_results
from engine.contract.scores import at_chance, decode_speed, headline_batch, task_scores

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


def effective(raw: dict[str, Any]) -> Experiment | None:
    """The experiment as the engine runs it (every default filled in), or None where the file no
    longer validates (a run of an older schema): its keys are then diffed as written."""
    try:
        return parse_experiment(copy.deepcopy(raw), source="experiment.toml")
    except (ConfigError, ValueError, TypeError):
        return None


# Sections that exist for one student only (STUDENT_SECTIONS): a stage that does not depend on one
# has no values there to compare (a prune stage against a distill stage is not a distill.* difference).
stage_sections = student_sections  # the student sections a stage depends on (engine.stages' one rule)


def stage_config(raw: dict[str, Any], stage: str) -> dict[str, Any]:
    """The keys a stage depends on, flattened, with the engine's defaults applied; its own [[prune]]
    table appears as `prune.*` (and its [distill], with the student's overrides, as `distill.*`)
    so the depth and the width student of one run can be diffed against each other."""
    exp = effective(raw)
    config = exp.model_dump(mode="json") if exp is not None else raw
    student = student_or_none(stage) or ""
    base = {k: v for k, v in config.items() if k not in ("name", "prune", "distill", "eval", "launch", "runs_dir")}
    sections = stage_sections(stage)
    if "prune" in sections:
        table = next((p for p in config.get("prune", []) if isinstance(p, dict) and p.get("name") == student), {})
        # a student's distill overrides are shown where they apply: folded into distill.*
        skip = ("name", "distill") if exp is not None else ("name",)
        base["prune"] = {k: v for k, v in table.items() if k not in skip}
    if "distill" in sections:
        if exp is not None and exp.distill is not None and any(p.name == student for p in exp.prune):
            base["distill"] = exp.distill_for(student).model_dump(mode="json")
        elif isinstance(config.get("distill"), dict):
            base["distill"] = config["distill"]
    return flatten(base)


class _NotUsed:
    """A diff cell of a stage that does not depend on the key's section."""

    def __str__(self) -> str:
        return "n/a"

    def __repr__(self) -> str:
        return "NOT_USED"


NOT_USED = _NotUsed()


def config_diff(configs: dict[str, dict[str, Any]],
                sections: dict[str, set[str]] | None = None) -> list[tuple[str, list[Any]]]:
    """[(key, [value per config])] for the keys whose values are not all equal (missing = None),
    prune.* first, then distill.*, then the rest. `sections`: per config, the student sections
    (STUDENT_SECTIONS) its stage depends on; a config's cell of another one is NOT_USED and not
    compared (all of them are compared without `sections`)."""
    labels = list(configs)
    keys = sorted({k for c in configs.values() for k in c}, key=_diff_order)
    rows = []
    for key in keys:
        top = key.partition(".")[0]
        values = [NOT_USED if sections is not None and top in STUDENT_SECTIONS and top not in sections[label]
                  else configs[label].get(key) for label in labels]
        compared = [v for v in values if v is not NOT_USED]
        if any(v != compared[0] for v in compared[1:]):
            rows.append((key, values))
    return rows


def _diff_order(key: str) -> tuple[int, str]:
    top = key.partition(".")[0]
    return ({"prune": 0, "distill": 1}.get(top, 2), key)


# ---- eval/results.json -------------------------------------------------------------------


def damaged_results(run_dir: Path) -> str | None:
    """A line when eval/results.json is there but unreadable: its rows would vanish without a word."""
    path = RunLayout(run_dir).results_file
    if path.exists() and not read_results(path):
        return f"{run_dir.name}: {path} is damaged or empty; run its eval stage again (--only eval)"
    return None


def results_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per model of eval/results.json: {"run", "model", "params", "<split>.loss",
    "<split>.perplexity", "task.<name>", "at_chance", "decode_tokens_per_s", "decode_spread",
    "under_load", "speedup", "speedup_range"}, read through engine.contract.results."""
    rows = []
    for name, res in read_results(RunLayout(run_dir).results_file).items():
        row: dict[str, Any] = {"run": run_dir.name, "model": name, "params": res.params}
        for split, m in res.splits.items():
            row[f"{split}.loss"] = m.loss
            row[f"{split}.perplexity"] = m.perplexity
        got = res.raw.get("tasks") if isinstance(res.raw.get("tasks"), dict) else {}
        scores = task_scores(res.raw)
        for task, score in scores.items():  # "task.<name>": the task's headline score
            row[f"task.{task}"] = score
        row["at_chance"] = {f"task.{t}" for t in scores if at_chance(got.get(t))}  # the rule `compare` marks by
        row["decode_tokens_per_s"] = decode_speed(res.raw)
        speed = res.raw.get("speed") if isinstance(res.raw.get("speed"), dict) else {}
        spread = speed.get("spread", {}).get("decode") if isinstance(speed.get("spread"), dict) else None
        sp = spread.get(headline_batch(speed)) if isinstance(spread, dict) else None
        row["decode_spread"] = float(sp) if isinstance(sp, (int, float)) else None  # (Q3 - Q1) / median
        row["under_load"] = speed.get("under_load") is True  # timed while the CPU was busy: noise
        row["speedup"] = speed.get("speedup_vs_teacher")
        row["speedup_range"] = speed.get("speedup_range")  # holds 1: within the spread, not faster
        rows.append(row)
    return rows


def task_cell(row: dict[str, Any], key: str) -> str:
    """"0.412"; "0.262 (chance)" when the score is within its stderr of a blind guess (as `compare`)."""
    return fmt.loss(row.get(key)) + (f" {AT_CHANCE}" if key in row.get("at_chance", ()) else "")


def decode_cell(row: dict[str, Any]) -> str:
    """"106 ±9%*": decode tokens/s, the spread of its repeats, * when timed under load (as which student?)."""
    sp = row.get("decode_spread")
    return (fmt.si(row.get("decode_tokens_per_s")) + (f" ±{100 * sp:.0f}%" if sp is not None else "")
            + ("*" if row.get("under_load") else ""))


# ---- a search's Pareto frontier (search.json) ----------------------------------------------


@dataclass(frozen=True)
class FrontierPlot:
    """One search student's frontier as Compare's Frontier tab plots it: quality (its score) against
    parameters, with the hand-made (depth, width) students of its run where their loss compares."""

    name: str  # the search student ("run:student" when several runs are ticked)
    score: str  # what quality is: "loss", "distill", "task ..."
    higher_is_better: bool
    scored: list[tuple[float, float]]  # (params, score) of every scored candidate
    frontier: list[tuple[float, float]]  # its frontier's points, fewest parameters first
    chosen: tuple[float, float] | None
    chosen_on_frontier: bool
    hand_made: list[tuple[str, str, float, float]]  # (student, method, params, validation loss after pruning)
    note: str = ""  # why the hand-made students are not marked, when they are not


def frontier_plots(runs: list[Path]) -> list[FrontierPlot]:
    """The frontier of every search student of `runs` (search.json's, or worked out from its
    candidates when it predates the frontier: SearchDoc.frontier, engine/contract/search_doc.py)."""
    from engine.contract.search_table import search_docs

    out = []
    for run in runs:
        try:
            docs = search_docs([run])
        except (ConfigError, UserError, OSError):  # not (yet) a readable run directory
            continue
        for name, doc in docs:
            plot = frontier_plot(f"{run.name}:{name}" if len(runs) > 1 else name, doc, run)
            if plot is not None:
                out.append(plot)
    return out


def frontier_plot(name: str, doc: SearchDoc, run: Path) -> FrontierPlot | None:
    """None when the search has no scored candidate (yet)."""

    f = doc.frontier
    if not f.points:
        return None
    score = doc.quality_name
    # the hand-made students' loss right after pruning is the search's quality only when it scored
    # by that loss; after a short distillation, or on a task, it is another measure
    note = "" if score == "loss" else f"hand-made students not marked: scored by {score}, not the loss after pruning"
    scored = [pt for c in doc.candidates if (pt := _point(c, f.quality)) is not None]
    frontier = [pt for i in f.points if (pt := _point(doc.candidate(i), f.quality)) is not None]
    return FrontierPlot(name, score, f.higher_is_better, scored, frontier, _point(doc.candidate(f.chosen), f.quality),
                        f.chosen_on_frontier, hand_made(run) if score == "loss" else [], note)


def _point(c: Candidate | None, quality: str) -> tuple[float, float] | None:
    """(params, quality) of candidate c, None where it has not both (or there is no c)."""
    if c is None:
        return None
    p, q = c.value("params"), c.value(quality)
    return (p, q) if p is not None and q is not None else None


def hand_made(run: Path) -> list[tuple[str, str, float, float]]:
    """(student, method, params, validation loss) of the run's depth and width students right after
    pruning (their prune-<name> entries of eval/results.json), in [[prune]] order."""
    results = read_results(RunLayout(run).results_file)
    out = []
    for p in read_experiment(run).get("prune") or []:
        m = method_or_none(p.get("method")) if isinstance(p, dict) else None
        if m is None or m.searches:
            continue
        res = results.get(PRUNE.stage(str(p.get("name"))))
        loss = res.validation.loss if res is not None and res.validation is not None else None
        if res is not None and res.params is not None and loss is not None:
            out.append((str(p["name"]), str(p["method"]), float(res.params), loss))
    return out


# ---- a search's heading in the Search tab ----------------------------------------------------


def search_heading(name: str, doc: SearchDoc) -> str:
    """engine.contract.search_table.title, and for an audited search (audit = N) its audit line below it:
    the Spearman correlations with the final validation loss and whether the chosen shape was best."""
    from engine.contract.search_audit import audit_line
    from engine.contract.search_table import title

    line = audit_line(doc)
    return title(name, doc) + (f"\n  {line}" if line else "")
