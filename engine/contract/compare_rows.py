"""The rows of `compare` and of the TUI's Compare: one per model of a run, read from the run directory
once into typed objects (ModelRow); and the validation-loss curves of its students.

Each model's config.json, its stages' metrics.jsonl, and eval/results.json when the eval stage ran,
so it works on finished, failed and running runs. Torch-free, like all of engine.contract: the
TUI reads them through here, `slimlab-engine compare` (engine.compare) renders them.

A model's parameter count, when results.json does not give it, comes from its config.json
(engine.config.shape, imported when needed: engine.config loads pydantic, which the TUI's start skips).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.contract.files import read_json
from engine.contract.layout import RunLayout, teacher_source
from engine.contract.metrics_summary import MetricsSummary, read_metrics_summary
from engine.contract.results import ModelResult, perplexity, read_results
from engine.contract.scores import at_chance, decode_range, mean_score, task_scores
from engine.errors import ConfigError
from engine.stages import DISTILL, FINETUNE, PRUNE

if TYPE_CHECKING:
    from engine.config import Experiment


@dataclass
class ModelRow:
    run: str
    label: str  # "teacher" | student name
    stage: str  # the stage whose model the row describes
    method: str = ""  # depth | width | teacher
    layers: int | None = None
    hidden: int | None = None
    ffn: int | None = None
    heads: str | None = None  # "32/8" = attention / key-value heads
    params: int | None = None
    pruned_loss: float | None = None
    distilled_loss: float | None = None
    ppl: float | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None
    # the eval stage's tasks, speed and samples of the row's model (engine/evaluation)
    tasks: dict[str, float] = field(default_factory=dict)  # task -> headline score (contract.scores)
    at_chance: set[str] = field(default_factory=set)  # tasks scored within their stderr of a blind guess
    decode_tokens_per_s: dict[str, float] = field(default_factory=dict)  # batch size -> tokens/s
    speedup: float | None = None  # decode tokens/s over the teacher's, at the smallest batch
    speedup_range: list[float] | None = None  # its interval: holds 1 = neither model is faster
    decode_range: tuple[float, float] | None = None  # middle half of the repeats, smallest batch
    decode_spread: dict[str, float] = field(default_factory=dict)  # batch size -> (Q3 - Q1) / median
    under_load: bool = False  # timed while other work competed for the CPU: noise
    repeats: int | None = None  # rounds timed: each speed figure is their median (engine.evaluation.speed)
    device: str | None = None
    samples: list[dict[str, str]] = field(default_factory=list)
    smaller: float | None = None  # teacher params / params

    @property
    def task_mean(self) -> float | None:
        return mean_score(self.tasks)


# ---- reading a run ---------------------------------------------------------------------------


def load_run(run_dir: str | Path) -> tuple[Experiment, RunLayout]:
    from engine.config import load_experiment

    layout = RunLayout(run_dir)
    if not layout.experiment_file.exists():
        raise ConfigError(f"{run_dir}: not a run directory (no experiment.toml); "
                          "give a directory made by `slimlab-engine run`, e.g. runs/demo")
    exp = load_experiment(layout.experiment_file)
    return exp, layout


def _config(path: Path) -> dict[str, Any]:
    return read_json(path / "config.json") or {}


def config_params(cfg: dict[str, Any]) -> int | None:
    """Parameters of a Llama-family decoder from its config (when eval did not count them); None when
    the config lacks a size (a scratch arch table before prepare knows the vocab) or cannot be sized."""
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size", "num_attention_heads")
    if any(cfg.get(k) is None for k in keys):
        return None
    from engine.config.shape import count_params, shape_from_config

    try:
        return count_params(shape_from_config(cfg))
    except (ConfigError, TypeError, ValueError, ZeroDivisionError):
        return None


def _shape(row: ModelRow, cfg: dict[str, Any]) -> None:
    row.layers = cfg.get("num_hidden_layers")
    row.hidden = cfg.get("hidden_size")
    row.ffn = cfg.get("intermediate_size")
    nh, nkv = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads")
    row.heads = f"{nh}/{nkv or nh}" if nh else None
    row.params = config_params(cfg)


def _decide(row: ModelRow, res: ModelResult | None) -> None:
    """Task scores, speed and samples of the eval stage's entry for the row's model."""
    if res is None:
        return
    row.tasks = task_scores(res.raw)
    got = res.raw.get("tasks") if isinstance(res.raw.get("tasks"), dict) else {}
    row.at_chance = {t for t in row.tasks if at_chance(got.get(t))}
    speed = res.raw.get("speed") if isinstance(res.raw.get("speed"), dict) else {}
    tps = speed.get("decode_tokens_per_s")
    if isinstance(tps, dict):
        row.decode_tokens_per_s = {str(b): float(v) for b, v in tps.items() if isinstance(v, (int, float))}
    up = speed.get("speedup_vs_teacher")
    row.speedup = float(up) if isinstance(up, (int, float)) else None
    rng = speed.get("speedup_range")
    row.speedup_range = [float(x) for x in rng] if isinstance(rng, list) and len(rng) == 2 else None
    row.decode_range = decode_range(res.raw)
    sp = speed.get("spread", {}).get("decode") if isinstance(speed.get("spread"), dict) else None
    row.decode_spread = {str(b): float(v) for b, v in sp.items() if isinstance(v, (int, float))} \
        if isinstance(sp, dict) else {}
    row.under_load = speed.get("under_load") is True
    reps = speed.get("repeats")
    row.repeats = reps if isinstance(reps, int) and not isinstance(reps, bool) else None
    row.device = speed.get("device") if isinstance(speed.get("device"), str) else None
    samples = res.raw.get("samples")
    if isinstance(samples, list):
        row.samples = [x for x in samples if isinstance(x, dict) and isinstance(x.get("text"), str)]


def _val_loss(res: ModelResult | None) -> float | None:
    v = res.validation if res else None
    return v.loss if v else None


def _last_val_loss(m: MetricsSummary) -> float | None:
    vals = m.val_losses
    return float(vals[-1]["loss"]) if vals else None


def read_model_rows(run_dir: str | Path) -> list[ModelRow]:
    """The teacher and every student of one run; a model results.json does not size is sized from its
    config.json (engine.config.shape)."""
    exp, layout = load_run(run_dir)
    results = read_results(layout.results_file)
    run = exp.name
    rows: list[ModelRow] = []

    teacher = ModelRow(run, "teacher", "finetune" if exp.finetune else "model", method="teacher")
    tcfg = _config(Path(teacher_source(exp, layout))) or ({"model_type": exp.model.arch.get("model_type"), **exp.model.arch}
                             if exp.model.arch else {})
    _shape(teacher, tcfg)
    tres = results.get("teacher")
    teacher.distilled_loss = _val_loss(tres)
    if exp.finetune:
        metrics = read_metrics_summary(layout.metrics_file(FINETUNE.stage()))
        if teacher.distilled_loss is None:
            teacher.distilled_loss = _last_val_loss(metrics)
        _throughput(teacher, metrics)
    if tres and tres.params:
        teacher.params = tres.params
    teacher.ppl = _ppl(tres, teacher.distilled_loss)
    _decide(teacher, tres)
    rows.append(teacher)

    for p in exp.prune:
        prune_stage, distill_stage = PRUNE.stage(p.name), DISTILL.stage(p.name)
        row = ModelRow(run, p.name, distill_stage if exp.distill else prune_stage, method=p.method)
        cfg = _config(layout.model_dir(distill_stage)) or _config(layout.model_dir(prune_stage))
        _shape(row, cfg)
        pres, dres = results.get(prune_stage), results.get(distill_stage)
        row.pruned_loss = _val_loss(pres)
        if row.pruned_loss is None:
            row.pruned_loss = _last_val_loss(read_metrics_summary(layout.metrics_file(prune_stage)))
        row.distilled_loss = _val_loss(dres)
        if exp.distill:
            metrics = read_metrics_summary(layout.metrics_file(distill_stage))
            if row.distilled_loss is None:
                row.distilled_loss = _last_val_loss(metrics)
            _throughput(row, metrics)
        for res in (dres, pres):
            if res and res.params:
                row.params = res.params
                break
        row.ppl = _ppl(dres, row.distilled_loss)
        _decide(row, dres or pres)
        if teacher.params and row.params:
            row.smaller = teacher.params / row.params
        rows.append(row)
    return rows


def _ppl(res: ModelResult | None, loss: float | None) -> float | None:
    v = res.validation if res else None
    if v is not None:
        return v.perplexity
    return None if loss is None else perplexity(loss)


def _throughput(row: ModelRow, metrics: MetricsSummary) -> None:
    row.tokens = metrics.tokens
    row.tokens_per_s = metrics.steady_tokens_per_s


def curves(run_dirs: list[str | Path]) -> dict[str, tuple[list[float], list[float]]]:
    """Validation loss against distillation step for each student; step 0 = right after pruning."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    many = len(run_dirs) > 1
    for rd in run_dirs:
        exp, layout = load_run(rd)
        for p in exp.prune:
            xs: list[float] = []
            ys: list[float] = []
            start = _last_val_loss(read_metrics_summary(layout.metrics_file(PRUNE.stage(p.name))))
            if start is not None:
                xs.append(0.0)
                ys.append(start)
            for r in read_metrics_summary(layout.metrics_file(DISTILL.stage(p.name))).val_losses:
                step = float(r.get("step", 0))
                if xs and step <= xs[-1]:
                    continue
                xs.append(step)
                ys.append(float(r["loss"]))
            if xs:
                label = p.name if p.name == p.method else f"{p.name} ({p.method})"
                out[f"{exp.name}:{label}" if many else label] = (xs, ys)
    return out
