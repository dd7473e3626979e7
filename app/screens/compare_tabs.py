"""Compare's tabs filled from what its loading worker read (app/screens/compare.py): the Results
table (eval/results.json), the Config diff, and the "decide" views (which student?, Quality vs
speed, Search, Frontier)."""

from __future__ import annotations

from rich.text import Text
from textual.dom import DOMNode
from textual.widgets import DataTable, Static

from app.data import fmt
from app.data.compare import NOT_USED, decode_cell, task_cell
from app.widgets.compare.frontier import FrontierChart
from app.widgets.compare.quality_speed import QualitySpeedChart
from app.widgets.compare.which_student import BEST, WhichStudentTable, student_colours
from engine.contract.scores import speedup_text


def fill_results(screen: DOMNode, rows: list[dict]) -> None:
    table = screen.query_one("#results-table", DataTable)
    table.clear(columns=True)
    if not rows:
        table.add_column("no eval/results.json in the ticked runs yet (the eval stage writes it)")
        return
    splits = sorted({k.split(".")[0] for r in rows for k in r if k.endswith(".loss")},
                    key=lambda s: ("validation", "test", "train").index(s) if s in ("validation", "test", "train") else 9)
    table.add_column("Run", width=14)
    table.add_column("Model", width=15)
    table.add_column("Params", width=7)
    for sp in splits:
        short = {"validation": "val", "test": "test", "train": "train"}.get(sp, sp)
        table.add_column(f"{short} loss", width=8)
        table.add_column(f"{short} ppl", width=8)
    tasks = list(dict.fromkeys(k for r in rows for k in r if k.startswith("task.")))
    for t in tasks:  # room for "0.262 (chance)" where a score is at chance
        table.add_column(t[len("task."):][:10], width=15 if any(t in r.get("at_chance", ()) for r in rows) else 10)
    speed = any(r.get("decode_tokens_per_s") for r in rows)
    if speed:
        table.add_column("decode/s", width=11)  # "12.3k ±12%*"
        table.add_column("speedup", width=7)
    for r in rows:
        cells = [r["run"], r["model"], fmt.si(r.get("params"))]
        for sp in splits:
            cells += [fmt.loss(r.get(f"{sp}.loss")), fmt.si(r.get(f"{sp}.perplexity"))]
        cells += [task_cell(r, t) for t in tasks]
        if speed:
            up = r.get("speedup")
            cells += [decode_cell(r),
                      speedup_text(up, r.get("speedup_range")) if isinstance(up, (int, float)) else "-"]
        table.add_row(*cells)


def fill_diff(screen: DOMNode, labels: list[str], diff: list[tuple[str, list]]) -> None:
    table = screen.query_one("#diff-table", DataTable)
    table.clear(columns=True)
    if len(labels) < 2:
        table.add_column("tick two or more stages to see the keys where their configs differ")
        return
    if not diff:
        table.add_column("the ticked stages have identical configs")
        return
    table.add_column("key", width=24)
    for label in labels:
        table.add_column(label, width=max(12, min(24, len(label))))
    for key, values in diff:
        table.add_row(key, *(_diff_cell(v) for v in values))


def fill_decide(screen: DOMNode, ylabel: str, points: list, xlabel: str, searches: list, rows: list = (),
                point_colours: dict | None = None, frontiers: list = ()) -> None:
    """The views of compare.decide_data's tuple."""
    screen.query_one(QualitySpeedChart).show(ylabel, points, xlabel, point_colours)
    screen.query_one(FrontierChart).show(list(frontiers))
    students = [r for r in rows if r.method != "teacher"]
    colours = student_colours((r.run, r.label) for r in students)
    screen.query_one(WhichStudentTable).show(rows, colours)
    screen.query_one("#which-title", Static).update(
        f"which student? {BEST} best student per column. loss: validation, pruned → distilled; "
        f"task: mean score{WhichStudentTable.task_note(students)}; "
        f"tok/s: decode, smallest batch{WhichStudentTable.speed_note(students)}. w: curves" if students
        else "which student? no students in the ticked runs yet (tick a run's stages; w: curves and tabs)")
    table = screen.query_one("#search-table", DataTable)
    table.clear(columns=True)
    screen.query_one("#search-title", Static).update(
        "\n".join(t for t, _, _ in searches) if searches
        else "no search student (method = \"search\") with a search.json in the ticked runs")
    if not searches:
        return
    from engine.contract.search_table import COLUMNS

    # the winner's mark next to the name: last, it was off-screen even at 120 columns
    table.add_column("student", width=12)
    table.add_column("chosen", width=8)
    for c in COLUMNS[:-1]:
        table.add_column(c)
    for _, rows, name in searches:
        for r in rows:
            chosen = bool(r[-1])
            cells = [name, "★ winner" if chosen else "", *r[:-1]]
            table.add_row(*(Text(c, style="bold") if chosen else c for c in cells))


def _diff_cell(value: object) -> str | Text:
    if value is NOT_USED:  # the stage does not depend on the key's section
        return Text("n/a", style="dim")
    return "–" if value is None else str(value)
