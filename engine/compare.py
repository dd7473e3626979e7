"""`compare`: one row per model of one or more runs, the validation-loss curves, a report.

Everything is read from the run directories (config.json of each model, metrics.jsonl, and
eval/results.json when the eval stage ran), so it works on finished, failed and running runs.
No torch import.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import ConfigError, Experiment, load_experiment
from engine.contract import (
    MetricsSummary,
    RunLayout,
    human_count,
    read_json,
    read_metrics_summary,
    teacher_source,
    write_atomic,
)
from engine.contract.results import ModelResult, perplexity, read_results
from engine.evaluation.scores import mean_score, task_scores
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
    # the eval stage's tasks, speed and samples of the row's model (engine/evaluation)
    tasks: dict[str, float] = field(default_factory=dict)  # task -> headline score (evaluation.scores)
    decode_tokens_per_s: dict[str, float] = field(default_factory=dict)  # batch size -> tokens/s
    speedup: float | None = None  # decode tokens/s over the teacher's, at the smallest batch
    device: str | None = None
    samples: list[dict[str, str]] = field(default_factory=list)
    smaller: float | None = None  # teacher params / params

    @property
    def task_mean(self) -> float | None:
        return mean_score(self.tasks)


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


def _decide(row: ModelRow, res: ModelResult | None) -> None:
    """Task scores, speed and samples of the eval stage's entry for the row's model."""
    if res is None:
        return
    row.tasks = task_scores(res.raw)
    speed = res.raw.get("speed") if isinstance(res.raw.get("speed"), dict) else {}
    tps = speed.get("decode_tokens_per_s")
    if isinstance(tps, dict):
        row.decode_tokens_per_s = {str(b): float(v) for b, v in tps.items() if isinstance(v, (int, float))}
    up = speed.get("speedup_vs_teacher")
    row.speedup = float(up) if isinstance(up, (int, float)) else None
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
        metrics = read_metrics_summary(layout.metrics_file("finetune"))
        if teacher.distilled_loss is None:
            teacher.distilled_loss = _last_val_loss(metrics)
        _throughput(teacher, metrics)
    if tres and tres.params:
        teacher.params = tres.params
    teacher.ppl = _ppl(tres, teacher.distilled_loss)
    _decide(teacher, tres)
    rows.append(teacher)

    for p in exp.prune:
        prune_stage, distill_stage = f"prune-{p.name}", f"distill-{p.name}"
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
            start = _last_val_loss(read_metrics_summary(layout.metrics_file(f"prune-{p.name}")))
            if start is not None:
                xs.append(0.0)
                ys.append(start)
            for r in read_metrics_summary(layout.metrics_file(f"distill-{p.name}")).val_losses:
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


# ---- "which student?": tasks, speed, samples --------------------------------------------------


def decide_columns(rows: list[ModelRow]) -> tuple[list[str], list[str]]:
    """(task names, decode batch sizes) that any row has, in first-seen order."""
    tasks = list(dict.fromkeys(t for r in rows for t in r.tasks))
    batches = sorted({b for r in rows for b in r.decode_tokens_per_s}, key=lambda b: int(b) if b.isdigit() else 0)
    return tasks, batches


def has_decide(rows: list[ModelRow]) -> bool:
    return any(r.tasks or r.decode_tokens_per_s for r in rows)


def decide_header(rows: list[ModelRow]) -> list[str]:
    tasks, batches = decide_columns(rows)
    mean = ["task mean"] if len(tasks) > 1 else []
    return (["model", "shape", "params", "x smaller", "loss pruned->distilled", *tasks, *mean]
            + [f"decode @{b}" for b in batches] + ["speedup"])


def decide_cells(row: ModelRow, rows: list[ModelRow]) -> list[str]:
    tasks, batches = decide_columns(rows)
    many = len({r.run for r in rows}) > 1
    name = row_cells(row, many)[0]
    shape = f"{row.layers or '-'}L h{row.hidden or '-'} ffn{row.ffn or '-'} {row.heads or '-'}"
    loss = (f"{_fmt_f(row.pruned_loss)}->{_fmt_f(row.distilled_loss)}" if row.pruned_loss is not None
            else _fmt_f(row.distilled_loss))
    mean = [_fmt_f(row.task_mean)] if len(tasks) > 1 else []
    return ([name, shape, _fmt_int(row.params), "1.00x" if row.method == "teacher" else
             (f"{row.smaller:.2f}x" if row.smaller else "-"), loss]
            + [_fmt_f(row.tasks.get(t)) for t in tasks] + mean
            + [_fmt_f(row.decode_tokens_per_s.get(b), 0) for b in batches]
            + [f"{row.speedup:.2f}x" if row.speedup is not None else "-"])


def decide_title(rows: list[ModelRow]) -> str:
    device = next((r.device for r in rows if r.device), None)
    return ("which student? task scores, decode tokens/s at batch @N" + (f" on {device}" if device else ""))


def rich_decide_table(rows: list[ModelRow]):
    from rich import box
    from rich.table import Table

    t = Table(title=decide_title(rows), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=0)
    for i, c in enumerate(decide_header(rows)):
        t.add_column(c, justify="left" if i < 2 else "right", no_wrap=True)
    for r in rows:
        t.add_row(*decide_cells(r, rows))
    return t


def markdown_decide_table(rows: list[ModelRow]) -> str:
    header = decide_header(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(decide_cells(r, rows)) + " |" for r in rows])


def one_line(text: str) -> str:
    """A sample on one line: line breaks shown as ↵, runs of spaces and tabs as one space."""
    return " ".join(text.replace("\r", "").replace("\n", " ↵ ").split()).replace("↵ ↵", "↵↵")


def sample_blocks(rows: list[ModelRow]) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(prompt, [(model, continuation)])]: every model's text for each prompt, side by side."""
    many = len({r.run for r in rows}) > 1
    out: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        for smp in r.samples:
            out.setdefault(str(smp.get("prompt", "")), []).append((row_cells(r, many)[0], smp["text"]))
    return list(out.items())


def samples_markdown(rows: list[ModelRow]) -> str:
    lines: list[str] = []
    for i, (prompt, texts) in enumerate(sample_blocks(rows), start=1):
        lines += [f"### Prompt {i}", "", "> " + one_line(prompt), "", "| model | continuation (greedy) |",
                  "|---|---|"]
        lines += [f"| {m} | {one_line(t).replace('|', '/')} |" for m, t in texts]
        lines.append("")
    return "\n".join(lines)


def print_samples(rows: list[ModelRow], console) -> None:
    from rich.text import Text

    blocks = sample_blocks(rows)
    if not blocks:
        console.print("no samples (run the eval stage; [eval] prompts = [] turns them off)")
    for i, (prompt, texts) in enumerate(blocks, start=1):
        console.print(Text(f"prompt {i}: {one_line(prompt)}", style="bold"))
        for m, t in texts:
            console.print(Text(f"  {m}: ", style="cyan") + Text(one_line(t)))


def quality_speed_points(rows: list[ModelRow]) -> tuple[str, list[tuple[str, str, float, float]]]:
    """(y-axis name, [(label, method, decode tokens/s at the smallest batch, quality)]): quality is
    the task mean when there are task scores, else the validation loss."""
    use_tasks = any(r.tasks for r in rows)
    many = len({r.run for r in rows}) > 1
    pts = []
    for r in rows:
        speed = r.decode_tokens_per_s.get(decide_columns(rows)[1][0]) if r.decode_tokens_per_s else None
        q = r.task_mean if use_tasks else r.distilled_loss
        if speed is not None and q is not None:
            pts.append((row_cells(r, many)[0], r.method, speed, q))
    return ("task score (mean)" if use_tasks else "validation loss (lower is better)"), pts


def write_quality_speed_png(rows: list[ModelRow], path: Path) -> bool:
    """Quality against decode speed, depth and width students told apart; False when nothing to plot."""
    ylabel, pts = quality_speed_points(rows)
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"teacher": ("*", "black"), "depth": ("o", "tab:blue"), "width": ("s", "tab:orange")}
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    seen: set[str] = set()
    for label, method, x, y in pts:
        marker, color = style.get(method, ("D", "tab:green"))
        ax.scatter([x], [y], marker=marker, color=color, s=90 if method == "teacher" else 50,
                   label=None if method in seen else method)
        seen.add(method)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    batch = decide_columns(rows)[1][0]
    ax.set_xlabel(f"decode tokens/s at batch {batch} (right is faster)")
    ax.set_ylabel(ylabel)
    ax.set_title("quality vs speed")
    _save_png(fig, ax, path)
    return True


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
    _save_png(fig, ax, path)


def _save_png(fig, ax, path: Path) -> None:
    """Grid, legend and tight layout; then the figure as a PNG written atomically, and closed."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def report_markdown(rows: list[ModelRow], run_dirs: list[str | Path], png_name: str | None,
                    quality_png: str | None = None) -> str:
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
    if has_decide(rows):
        lines += ["", "## Which student?", "",
                  "Task scores: each task's headline metric from lm-evaluation-harness (acc_norm, else acc, ...); "
                  "decode tok/s: greedy decoding with the KV cache; speedup: decode tokens/s over the teacher's "
                  "at the smallest batch size. Every metric, its stderr and the prefill speed and memory: "
                  "eval/results.json.", "", decide_title(rows), "", markdown_decide_table(rows)]
        if quality_png:
            lines += ["", f"![quality vs speed]({quality_png})"]
    if any(r.samples for r in rows):
        lines += ["", "## Samples", "", samples_markdown(rows)]
    return "\n".join(lines) + "\n"


def compare(run_dirs: list[str | Path], out_dir: str | Path | None = None, chart: bool = True,
            console=None, samples: bool = False) -> list[ModelRow]:
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
    if has_decide(rows):
        console.print(rich_decide_table(rows))
    if samples:
        print_samples(rows, console)
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
    quality = "quality_speed.png" if write_quality_speed_png(rows, out / "quality_speed.png") else None
    write_atomic(out / "report.md", report_markdown(rows, run_dirs, png, quality) + search_markdown(run_dirs))
    written = [out / "report.md"] + [out / n for n in (png, quality) if n]
    console.print("wrote " + ", ".join(str(w) for w in written))
    return rows
