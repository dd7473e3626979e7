"""Compare's first view, "which student?": one row per student of the ticked runs (the teacher
first, for reference) with its shape, how many times smaller than the teacher it is, its validation
loss pruned -> distilled, task score, decode speed and speedup; the best student on each column is
marked ★ (decode speed and speedup: only when its interval overlaps no other student's). Eight columns that fit 80: the decision at a glance, where the Results tab needs 120.

And one colour per student, shared by this table, the loss chart and its key, and the quality vs
speed plot: a student's prune and distill curves have its colour (the prune one dotted)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from app.data import fmt
from app.widgets.compare.speed_note import spread_note
from engine.contract.scores import clearly_best, speedup_text

# plotext colour names readable on both themes (see loss_chart.PALETTE); the teacher is gray
STUDENT_COLOURS = ("blue", "red", "green", "magenta", "cyan", "orange")
TEACHER_COLOUR = "gray"
BEST = "★"
AT_CHANCE = "°"  # a task mean whose every score is within its stderr of a blind guess: no ★, it decides nothing

# (key, header, width): widths + DataTable's 2-cell padding per column fit 78 columns
# ("≈1.04x★": a speedup within its spread; "12.3k*★": timed under load; "0.262°": at chance)
COLUMNS = (("student", "student", 10), ("shape", "shape", 16), ("smaller", "×small", 6),
           ("loss", "loss p→d", 12), ("task", "task", 6), ("decode", "tok/s", 7), ("speedup", "speed", 7))


def student_colours(students: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(run, student) -> its colour, in the order given (a run's [[prune]] order, runs sorted)."""
    keys = list(dict.fromkeys(students))
    return {k: STUDENT_COLOURS[i % len(STUDENT_COLOURS)] for i, k in enumerate(keys)}


def dimmed(colour: str, background: tuple[int, int, int], amount: float = 0.5) -> tuple[int, int, int]:
    """`colour` (a plotext name) halfway to the background: a student's pruned reference line, in its
    hue but dimmer than its distilled curve (darker on the dark theme, paler on the light one)."""
    from plotext._utility import get_color_code
    from rich.color import Color

    code = get_color_code(colour)
    rgb = Color.from_ansi(code).get_truecolor() if isinstance(code, int) else (128, 128, 128)
    return tuple(round(c + (b - c) * amount) for c, b in zip(rgb, background, strict=True))  # type: ignore[return-value]


def shape_text(row: Any) -> str:
    """"16L h4096 f14336": layers, hidden, ffn (heads are in the Results tab)."""
    return f"{row.layers or '–'}L h{row.hidden or '–'} f{row.ffn or '–'}"


def _best(values: list[float | None], higher: bool) -> float | None:
    present = [v for v in values if v is not None]
    return (max(present) if higher else min(present)) if len(present) > 1 else None


def decode_speed(row: Any) -> float | None:
    """Decode tokens/s at the smallest measured batch."""
    tps = row.decode_tokens_per_s or {}
    if not tps:
        return None
    return tps[min(tps, key=lambda b: int(b) if str(b).isdigit() else 0)]


def all_at_chance(row: Any) -> bool:
    """Whether every task score of the row is at chance (engine.contract.ModelRow.at_chance, the
    rule `compare` marks "(chance)" by): then so is their mean, the table's task column."""
    return bool(row.tasks) and set(row.tasks) <= row.at_chance


def table_rows(rows: list[Any], colours: dict[tuple[str, str], str]) -> list[list[Text]]:
    """The cells of each model row (engine.contract.ModelRow): students' best values marked."""
    students = [r for r in rows if r.method != "teacher"]
    many = len({r.run for r in rows}) > 1
    metrics = {  # column -> (value of a row, higher is better)
        "smaller": (lambda r: r.smaller, True),
        "loss": (lambda r: r.distilled_loss if r.distilled_loss is not None else r.pruned_loss, False),
        "task": (lambda r: r.task_mean, True),
        "decode": (decode_speed, True),
        "speedup": (lambda r: r.speedup, True),
    }
    best = {col: _best([get(r) for r in students], higher) for col, (get, higher) in metrics.items()}
    for col, spans in (("decode", [r.decode_range for r in students]),  # speed: ★ only past the spread
                       ("speedup", [tuple(r.speedup_range) if r.speedup_range else None for r in students])):
        get, higher = metrics[col]
        i = clearly_best([get(r) for r in students], spans, higher)
        best[col] = get(students[i]) if i is not None else None
    out = []
    for r in rows:
        teacher = r.method == "teacher"
        name = f"{r.run}:{r.label}" if many else r.label
        colour = TEACHER_COLOUR if teacher else colours.get((r.run, r.label), "default")
        loss = (f"{fmt.loss(r.pruned_loss)}→{fmt.loss(r.distilled_loss)}" if r.pruned_loss is not None
                else fmt.loss(r.distilled_loss))
        up = r.speedup
        texts = {
            "smaller": "1.0x" if teacher else (f"{r.smaller:.1f}x" if r.smaller else "–"),
            "loss": loss,
            "task": (fmt.loss(r.task_mean) + (AT_CHANCE if all_at_chance(r) else "")) if r.task_mean is not None else "–",
            "decode": fmt.si(decode_speed(r)) + ("*" if r.under_load else ""),  # *: timed under load, noise
            "speedup": "1.00x" if teacher and up is None else (speedup_text(up, r.speedup_range) if up is not None
                                                               else "–"),
        }
        cells = [Text(name, style=f"bold {_rich(colour)}", overflow="ellipsis", no_wrap=True),
                 Text(shape_text(r), overflow="ellipsis", no_wrap=True)]
        for col, (get, _higher) in metrics.items():
            mark = (not teacher and best[col] is not None and get(r) == best[col]
                    and not (col == "task" and all_at_chance(r)))  # the best of guesses is no winner
            cells.append(Text(texts[col] + (BEST if mark else ""), style="bold" if mark else ("dim" if teacher else "")))
        out.append(cells)
    return out


def _rich(colour: str) -> str:
    """The ANSI colour plotext draws `colour` in, as a rich style (the chart key does the same)."""
    from app.widgets.loss_chart import _style

    style = _style(colour)
    return str(style.color.name) if style.color is not None else ""


class WhichStudentTable(DataTable):
    """The table; `show(rows, colours)` replaces its rows."""

    def __init__(self, **kwargs):
        super().__init__(zebra_stripes=True, cursor_type="row", **kwargs)
        for key, header, width in COLUMNS:
            self.add_column(header, key=key, width=width)
        self.models: list[tuple[str, str, str]] = []  # each row's (run, label, method)

    @staticmethod
    def speed_note(students: list[Any]) -> str:
        """", median of 12 rounds ±3-9%; *: loaded CPU": what its tok/s figures are worth
        (speed_note.spread_note)."""
        return spread_note(students)

    @staticmethod
    def task_note(students: list[Any]) -> str:
        """"; °: at chance" when a student's task mark needs saying."""
        return f"; {AT_CHANCE}: at chance" if any(all_at_chance(r) for r in students) else ""

    def highlighted_model(self) -> tuple[str, str, str] | None:
        return self.models[self.cursor_row] if 0 <= self.cursor_row < len(self.models) else None

    def show(self, rows: list[Any], colours: dict[tuple[str, str], str]) -> None:
        self.models = [(r.run, r.label, r.method) for r in rows]
        self.clear()
        for i, cells in enumerate(table_rows(rows, colours)):
            self.add_row(*cells, key=str(i))
