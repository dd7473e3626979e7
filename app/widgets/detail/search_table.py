"""The search table of a search student (prune-<name>/search.json) in Run detail: every candidate,
the scored ones by rank and the winner marked, then those not scored. Torch-free: the engine's
table module reads only the contract."""

from __future__ import annotations

import json

from rich import box
from rich.console import RenderableType
from rich.table import Table
from textual.widgets import Static

from app.data.compare import search_heading
from engine.contract import Candidate, SearchDoc, search_doc, student_or_none
from engine.contract.search_table import COLUMNS, candidate_cells

WINNER = "★ winner"


def candidate_row(c: Candidate) -> list[str]:
    return [*candidate_cells(c), WINNER if c.chosen else ""]


def candidate_rows(doc: SearchDoc) -> list[list[str]]:
    """Every candidate: scored ones best first, then the rest best-screened first, then those not
    screened in the file's order (deepest first)."""
    rest = sorted((c for c in doc.candidates if c.rank is None),
                  key=lambda c: (c.screen_rank is None, c.screen_rank or 0))  # stable
    return [candidate_row(c) for c in doc.scored + rest]


def parse_search(text: str) -> SearchDoc | None:
    """search.json's document, typed (engine.contract.search_doc), or None when there is none (yet)
    or it is not one."""
    try:
        doc = json.loads(text) if text else None
    except ValueError:
        return None
    return search_doc(doc)


def search_renderable(stage: str, doc: SearchDoc) -> RenderableType:
    """The table, titled with the budget and how many candidates were scored."""
    name = student_or_none(stage) or stage
    try:
        rows = candidate_rows(doc)
        heading = search_heading(name, doc)  # the title, and an audited search's audit line
    except (KeyError, TypeError, ValueError) as e:  # a hand-edited or foreign file: say so, do not crash
        return f"{stage}/search.json: unreadable candidate ({type(e).__name__}: {e})"
    t = Table(title=heading, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
              padding=(0, 1, 0, 0))
    for i, c in enumerate(COLUMNS):
        t.add_column(c, justify="left" if i == len(COLUMNS) - 1 else "right", no_wrap=True)
    for row in rows:
        t.add_row(*row, style="bold" if row[-1] else ("dim" if row[0] == "-" else None))
    return t


class SearchTable(Static):
    """Below the stage's status: its search table, hidden for a stage without a search.json."""

    DEFAULT_CSS = """
    SearchTable {
        width: auto;  /* as wide as the table: its pane scrolls sideways on a narrow terminal */
        height: auto;
        padding: 1 1 0 1;
    }
    """

    def __init__(self, **kwargs):
        super().__init__("", markup=False, **kwargs)
        self.doc: SearchDoc | None = None

    def on_mount(self) -> None:
        self.display = False

    def show(self, stage: str | None, text: str) -> None:
        """search.json's text ('' when absent) for `stage`; None stage or no document hides it."""
        self.doc = parse_search(text) if stage else None
        self.display = self.doc is not None
        self.update(search_renderable(stage, self.doc) if stage and self.doc is not None else "")
