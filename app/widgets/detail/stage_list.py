"""The stage graph of a run: one line per stage in pipeline order, with its state and progress."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from app.data import fmt
from app.data.scan import RunInfo, StageInfo
from app.widgets.style import state_style


def stage_prompt(app, s: StageInfo, last: bool) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append("└" if last else "├", style="dim")
    t.append(f"{fmt.STATE_GLYPH.get(s.state, '?')} ", style=state_style(app, s.state))
    t.append(s.name)
    frac = s.fraction
    if s.state == "running" and frac is not None:
        t.append(f" {frac * 100:.0f}%", style=state_style(app, s.state))
    return t


class StageList(OptionList):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._names: tuple[str, ...] = ()
        self._shown: dict[str, StageInfo] = {}

    def show_run(self, run: RunInfo, restyle: bool = False) -> None:
        names = tuple(s.name for s in run.stages)
        if names != self._names:
            keep = self.highlighted_stage
            self.clear_options()
            self._shown.clear()
            self.add_options([Option(stage_prompt(self.app, s, i == len(names) - 1), id=s.name)
                              for i, s in enumerate(run.stages)])
            self._names = names
            if keep in names:
                self.highlighted = names.index(keep)
        for i, s in enumerate(run.stages):
            if self._shown.get(s.name) != s or restyle:
                self.replace_option_prompt(s.name, stage_prompt(self.app, s, i == len(names) - 1))
        self._shown = {s.name: s for s in run.stages}

    @property
    def highlighted_stage(self) -> str | None:
        if self.highlighted is None or self.highlighted >= len(self._names):
            return None
        return self._names[self.highlighted]

    def select_stage(self, name: str) -> None:
        if name in self._names:
            self.highlighted = self._names.index(name)
