"""`slimlab-engine compare`: print the tables and chart, write report.md and the PNGs."""

from __future__ import annotations

from pathlib import Path

from engine.compare.charts import (
    terminal_chart,
    write_png,
    write_quality_speed_png,
)
from engine.compare.tables import (
    decide_title,
    has_decide,
    markdown_decide_table,
    markdown_table,
    print_samples,
    rich_decide_table,
    rich_table,
    samples_markdown,
)
from engine.contract import (
    write_atomic,
)
from engine.contract.compare_rows import ModelRow, curves, read_model_rows
from engine.errors import ConfigError


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
                  "at the smallest batch size; ±: the spread of the repeats (the models are timed round robin), "
                  "≈: the speedup's interval holds 1, so neither model is faster; *: timed under load. Every metric, its stderr and the prefill speed and memory: "
                  "eval/results.json.", "", decide_title(rows), "", markdown_decide_table(rows)]
        if quality_png:
            lines += ["", f"![quality vs speed]({quality_png})"]
    if any(r.samples for r in rows):
        lines += ["", "## Samples", "", samples_markdown(rows)]
    return "\n".join(lines) + "\n"


def run_warnings(run_dir: str | Path) -> list[str]:
    """What the table cannot show of a run: a damaged results.json (its columns would stay empty without a
    word), a finished stage whose model is gone since."""
    from engine.contract import RunLayout, read_json, read_results
    from engine.contract.divergence import stage_divergence
    from engine.contract.outputs import missing_output

    layout = RunLayout(run_dir)
    out = []
    if layout.results_file.exists() and not read_results(layout.results_file):
        out.append(f"{layout.results_file} is damaged or empty, so its columns are blank; run the eval stage "
                   f"again: slimlab-engine run {layout.experiment_file} --only eval")
    for stage in layout.stages_on_disk():
        if (read_json(layout.stage_status_file(stage)) or {}).get("state") != "succeeded":
            continue
        if gone := missing_output(layout, stage):
            out.append(f"{layout.root.name}: {stage} succeeded, but {gone} (deleted?); `run` redoes it")
        if diverged := stage_divergence(layout.metrics_file(stage)):
            out.append(f"{layout.root.name}: {stage}: {diverged}")
    return out


def compare(run_dirs: list[str | Path], out_dir: str | Path | None = None, chart: bool = True,
            console=None, samples: bool = False, html: bool = False) -> list[ModelRow]:
    """Print the table and chart; write report.md and val_loss.png into `out_dir` (the first run);
    `html`: report.html too, one self-contained page (engine.compare.html)."""
    from rich.console import Console

    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ConfigError(f"--out: {out_dir} is a file; give a folder for report.md and the charts")
    if console is None:
        console = Console()
        if not console.is_terminal:  # a pipe or a log file: room for the whole table and chart
            console = Console(width=120)
    rows: list[ModelRow] = []
    for rd in run_dirs:
        rows += read_model_rows(rd)
    console.print(rich_table(rows))
    for rd in run_dirs:
        for line in run_warnings(rd):
            console.print(f"warning: {line}", markup=False, highlight=False)
    if has_decide(rows):
        console.print(rich_decide_table(rows))
    if samples:
        print_samples(rows, console)
    from engine.contract.search_table import rich_search_tables, search_markdown

    for table in rich_search_tables(run_dirs):  # search students: their candidates, the winner marked
        console.print(table)
    from engine.compare.frontier import print_frontiers

    frontier_md = print_frontiers(run_dirs, console)  # each search's Pareto frontier, the chosen point marked
    from engine.compare.audit import print_audits

    frontier_md += print_audits(run_dirs, console)  # each audited search: its ranking against the real distillation
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
    markdown = report_markdown(rows, run_dirs, png, quality) + search_markdown(run_dirs) + frontier_md
    write_atomic(out / "report.md", markdown)
    written = [out / "report.md"] + [out / n for n in (png, quality) if n]
    if html:
        from engine.compare.html import report_html

        title = "slimlab report: " + ", ".join(Path(r).name for r in run_dirs)
        write_atomic(out / "report.html", report_html(markdown, out, title))
        written.append(out / "report.html")
    console.print("wrote " + ", ".join(str(w) for w in written))
    return rows
