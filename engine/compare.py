"""`compare`: one row per model of one or more runs, the validation-loss curves, a report.

Everything is read from the run directories (config.json of each model, metrics.jsonl, and
eval/results.json when the eval stage ran), so it works on finished, failed and running runs.
No torch import.
"""

from __future__ import annotations

import io
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import ConfigError, Experiment, load_experiment
from engine.contract import RunLayout, human_count, read_json, read_metrics, teacher_source, write_atomic
from engine.contract.results import ModelResult, perplexity, read_results
from engine.shapes.shape import count_params, shape_from_config


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


# ---- reading a run ---------------------------------------------------------------------------


def load_run(run_dir: str | Path) -> tuple[Experiment, RunLayout]:
    layout = RunLayout(run_dir)
    if not layout.experiment_file.exists():
        raise ConfigError(f"{run_dir}: not a run directory (no experiment.toml); "
                          "give a directory made by `slimlab-engine run`, e.g. runs/demo")
    exp = load_experiment(layout.experiment_file)
    return exp, layout


def _config(path: Path) -> dict[str, Any]:
    return read_json(path / "config.json") or {}


def param_count(cfg: dict[str, Any]) -> int | None:
    """Parameters of a Llama-family decoder from its config (when eval did not count them);
    None when the config lacks a size (a scratch arch table before prepare knows the vocab)."""
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size", "num_attention_heads")
    if any(cfg.get(k) is None for k in keys):
        return None
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
    row.params = param_count(cfg)


def _val_loss(res: ModelResult | None) -> float | None:
    v = res.validation if res else None
    return v.loss if v else None


def stage_records(layout: RunLayout, stage: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(validation records with a loss, train records) of one stage's metrics.jsonl, read once."""
    recs, _ = read_metrics(layout.metrics_file(stage))
    val = [r for r in recs if r.get("split") == "val" and isinstance(r.get("loss"), (int, float))]
    return val, [r for r in recs if r.get("split") == "train"]


def model_rows(run_dir: str | Path) -> list[ModelRow]:
    """The teacher and every student of one run."""
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
        vals, train = stage_records(layout, "finetune")
        if teacher.distilled_loss is None:
            teacher.distilled_loss = vals[-1]["loss"] if vals else None
        _throughput(teacher, train)
    if tres and tres.params:
        teacher.params = tres.params
    teacher.ppl = _ppl(tres, teacher.distilled_loss)
    rows.append(teacher)

    for p in exp.prune:
        prune_stage, distill_stage = f"prune-{p.name}", f"distill-{p.name}"
        row = ModelRow(run, p.name, distill_stage if exp.distill else prune_stage, method=p.method)
        cfg = _config(layout.model_dir(distill_stage)) or _config(layout.model_dir(prune_stage))
        _shape(row, cfg)
        pres, dres = results.get(prune_stage), results.get(distill_stage)
        row.pruned_loss = _val_loss(pres)
        if row.pruned_loss is None:
            vals, _ = stage_records(layout, prune_stage)
            row.pruned_loss = vals[-1]["loss"] if vals else None
        row.distilled_loss = _val_loss(dres)
        if exp.distill:
            vals, train = stage_records(layout, distill_stage)
            if row.distilled_loss is None:
                row.distilled_loss = vals[-1]["loss"] if vals else None
            _throughput(row, train)
        for res in (dres, pres):
            if res and res.params:
                row.params = res.params
                break
        row.ppl = _ppl(dres, row.distilled_loss)
        rows.append(row)
    return rows


def _ppl(res: ModelResult | None, loss: float | None) -> float | None:
    v = res.validation if res else None
    if v is not None:
        return v.perplexity
    return None if loss is None else perplexity(loss)


def _throughput(row: ModelRow, train: list[dict[str, Any]]) -> None:
    if not train:
        return
    tokens = [r.get("tokens") for r in train if isinstance(r.get("tokens"), (int, float))]
    row.tokens = int(tokens[-1]) if tokens else None
    speeds = [float(r["tokens_per_s"]) for r in train if isinstance(r.get("tokens_per_s"), (int, float))]
    if speeds:
        row.tokens_per_s = statistics.median(speeds[len(speeds) // 4:] or speeds)  # skip warm-up steps


def curves(run_dirs: list[str | Path]) -> dict[str, tuple[list[float], list[float]]]:
    """Validation loss against distillation step for each student; step 0 = right after pruning."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    many = len(run_dirs) > 1
    for rd in run_dirs:
        exp, layout = load_run(rd)
        for p in exp.prune:
            xs: list[float] = []
            ys: list[float] = []
            start, _ = stage_records(layout, f"prune-{p.name}")
            if start:
                xs.append(0.0)
                ys.append(float(start[-1]["loss"]))
            for r in stage_records(layout, f"distill-{p.name}")[0]:
                step = float(r.get("step", 0))
                if xs and step <= xs[-1]:
                    continue
                xs.append(step)
                ys.append(float(r["loss"]))
            if xs:
                label = p.name if p.name == p.method else f"{p.name} ({p.method})"
                out[f"{exp.name}:{label}" if many else label] = (xs, ys)
    return out


# ---- rendering -------------------------------------------------------------------------------


COLUMNS = ["model", "layers", "hidden", "ffn", "heads", "params", "pruned", "distilled", "ppl", "tokens",
           "tok/s"]


def _fmt_int(n: int | None, digits: int = 2) -> str:
    return "-" if n is None else human_count(n, digits)


def _fmt_f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def row_cells(row: ModelRow, many_runs: bool) -> list[str]:
    name = f"{row.run}:{row.label}" if many_runs else row.label
    if row.method and row.method not in ("teacher", row.label):
        name += f" ({row.method})"
    return [name, str(row.layers or "-"), str(row.hidden or "-"), str(row.ffn or "-"), row.heads or "-",
            _fmt_int(row.params), _fmt_f(row.pruned_loss), _fmt_f(row.distilled_loss),
            _fmt_f(row.ppl, 1), _fmt_int(row.tokens, 1), _fmt_int(int(row.tokens_per_s), 1) if row.tokens_per_s else "-"]


def rich_table(rows: list[ModelRow]):
    from rich import box
    from rich.table import Table

    many = len({r.run for r in rows}) > 1
    t = Table(title="validation loss after pruning and after distillation", title_justify="left",
              box=box.SIMPLE_HEAD, pad_edge=False, padding=0)
    for i, c in enumerate(COLUMNS):
        t.add_column(c, justify="left" if i == 0 else "right", no_wrap=True)
    for r in rows:
        t.add_row(*row_cells(r, many))
    return t


def markdown_table(rows: list[ModelRow]) -> str:
    many = len({r.run for r in rows}) > 1
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row_cells(r, many)) + " |" for r in rows]
    return "\n".join(lines)


def terminal_chart(series: dict[str, tuple[list[float], list[float]]], width: int = 100, height: int = 22) -> str:
    import plotext as plt

    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("pro")
    for label, (xs, ys) in series.items():
        plt.plot(xs, ys, label=label, marker="braille")
    plt.title("validation loss while distilling (step 0 = right after pruning)")
    plt.xlabel("distillation step")
    out = plt.build()
    plt.clear_figure()
    return out


def write_png(series: dict[str, tuple[list[float], list[float]]], path: Path, teacher: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    if teacher is not None:
        ax.axhline(teacher, color="gray", linestyle="--", linewidth=1, label="teacher")
    ax.set_xlabel("distillation step (0 = right after pruning)")
    ax.set_ylabel("validation loss")
    ax.set_title("depth vs width: validation loss while distilling")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def report_markdown(rows: list[ModelRow], run_dirs: list[str | Path], png_name: str | None) -> str:
    lines = [f"# slimlab report: {', '.join(str(Path(r)) for r in run_dirs)}", "",
             "Losses are validation cross-entropy (nats/token): `pruned` right after pruning, `distilled` "
             "after distillation (for the teacher: its own loss); `ppl` = exp(distilled); `heads` = "
             "attention/key-value heads; `tokens` and `tok/s`: distillation (for the teacher: its training).", "",
             markdown_table(rows), ""]
    for r in rows:
        if r.pruned_loss is not None and r.distilled_loss is not None:
            lines.append(f"- {r.run}:{r.label} ({r.method}): {r.pruned_loss:.3f} after pruning -> "
                         f"{r.distilled_loss:.3f} after distillation")
    if png_name:
        lines += ["", f"![validation loss]({png_name})"]
    return "\n".join(lines) + "\n"


def compare(run_dirs: list[str | Path], out_dir: str | Path | None = None, chart: bool = True,
            console=None) -> list[ModelRow]:
    """Print the table and chart; write report.md and val_loss.png into `out_dir` (the first run)."""
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:  # a pipe or a log file: room for the whole table and chart
            console = Console(width=120)
    rows: list[ModelRow] = []
    for rd in run_dirs:
        rows += model_rows(rd)
    console.print(rich_table(rows))
    from engine.search.table import rich_search_tables, search_markdown

    for table in rich_search_tables(run_dirs):  # search students: their candidates, the winner marked
        console.print(table)
    series = curves(run_dirs)
    if chart and series:
        from rich.text import Text

        # plotext colours tell the curves apart; rich drops them where the output is no terminal
        chart_text = Text.from_ansi(terminal_chart(series, width=max(40, min(console.width, 110) - 1)))
        console.print(chart_text, no_wrap=True, overflow="crop")
    elif not series:
        console.print("no validation curves yet (the distill stages have not logged any)")
    out = Path(out_dir or run_dirs[0])
    png = None
    if series:
        teacher = next((r.distilled_loss for r in rows if r.label == "teacher"), None) if len(run_dirs) == 1 else None
        write_png(series, out / "val_loss.png", teacher)
        png = "val_loss.png"
    write_atomic(out / "report.md", report_markdown(rows, run_dirs, png) + search_markdown(run_dirs))
    console.print(f"wrote {out / 'report.md'}" + (f" and {out / 'val_loss.png'}" if png else ""))
    return rows
