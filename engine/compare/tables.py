"""`compare` tables: the loss table and the 'which student?' table (tasks, speed), rich and markdown;
the samples side by side."""

from __future__ import annotations

from engine.contract.compare_cells import (
    AT_CHANCE,
    COLUMNS,
    count_cell,
    decide_columns,
    number_cell,
    row_cells,
)
from engine.contract.compare_rows import ModelRow
from engine.contract.scores import speedup_text

# ---- rendering -------------------------------------------------------------------------------


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
    loss = (f"{number_cell(row.pruned_loss)}->{number_cell(row.distilled_loss)}" if row.pruned_loss is not None
            else number_cell(row.distilled_loss))
    mean = [number_cell(row.task_mean)] if len(tasks) > 1 else []
    return ([name, shape, count_cell(row.params), "1.00x" if row.method == "teacher" else
             (f"{row.smaller:.2f}x" if row.smaller else "-"), loss]
            + [task_text(row, t) for t in tasks] + mean
            + [decode_text(row, b) for b in batches]
            + [speedup_text(row.speedup, row.speedup_range)])


def task_text(row: ModelRow, task: str) -> str:
    """"0.412"; "0.262 (chance)" when the score is within its stderr of a blind guess: it decides nothing."""
    return number_cell(row.tasks.get(task)) + (f" {AT_CHANCE}" if task in row.at_chance else "")


def decode_text(row: ModelRow, batch: str) -> str:
    """"106 ±9%": the median decode tokens/s and the spread of its repeats; "*": taken under load."""
    v = row.decode_tokens_per_s.get(batch)
    if v is None:
        return "-"
    sp = row.decode_spread.get(batch)
    return f"{v:.0f}" + (f" ±{100 * sp:.0f}%" if sp is not None else "") + ("*" if row.under_load else "")


def decide_title(rows: list[ModelRow]) -> str:
    device = next((r.device for r in rows if r.device), None)
    return ("which student? task scores, decode tokens/s at batch @N" + (f" on {device}" if device else "")
            + ("; ≈: within the spread, not faster" if any(r.speedup_range for r in rows) else "")
            + ("; *: timed under load, noise" if any(r.under_load for r in rows) else "")
            + (f"; {AT_CHANCE}: within one stderr of a blind guess" if any(r.at_chance for r in rows) else ""))


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
