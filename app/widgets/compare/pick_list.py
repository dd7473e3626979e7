"""The stages Compare can overlay: every finetune / prune-* / distill-* stage of every run."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import SelectionList
from textual.widgets.selection_list import Selection

from engine.contract import RunInfo, kind_or_none


def comparable_stages(runs: list[RunInfo]) -> list[tuple[str, str]]:
    """(value, label) per stage that has or will have a val curve; value = "<run path>::<stage>"."""
    out = []
    for r in runs:
        for s in r.stages:
            if (k := kind_or_none(s.name)) is not None and k.val_curve and s.state != "pending":
                out.append((f"{r.path}::{s.name}", f"{r.name}/{s.name}"))
    return out


def split_value(value: str) -> tuple[Path, str]:
    path, _, stage = value.rpartition("::")
    return Path(path), stage


class PickList(SelectionList[str]):
    """Keeps the user's ticks while runs come and go."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stage_values: list[str] = []

    def update_runs(self, runs: list[RunInfo]) -> bool:
        """Add new stages / drop vanished ones; True when the list changed."""
        items = comparable_stages(runs)
        values = [v for v, _ in items]
        if values == self.stage_values:
            return False
        keep = set(self.selected)
        highlighted = self.highlighted
        self.clear_options()
        self.add_options([Selection(label, value, value in keep) for value, label in items])
        self.stage_values = values
        if values:  # a highlight from the start: the first space ticks a stage
            self.highlighted = 0 if highlighted is None else min(highlighted, len(values) - 1)
        return True

    def select_values(self, values: list[str]) -> None:
        for v in values:
            if v in self.stage_values:
                self.select(v)
