"""The stage graph of a run: one line per stage in pipeline order, with its state and progress."""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from app.data import fmt
from app.widgets.style import state_style
from engine.contract import RunInfo, StageInfo


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
        self._clicks = 0  # clicks of the current click chain that landed here

    def _on_click(self, event: events.Click) -> None:
        """The second click of a double click whose first click was elsewhere is no pick: the double
        click on a Runs row opens this screen on its first click, and its second lands here (on
        'prepare', at the row's place), which picked that stage and stopped follow mode."""
        if event.chain > 1 and self._clicks != event.chain - 1:
            self._clicks = 0  # and the rest of that chain (a triple click) neither
            event.prevent_default()  # OptionList's own handler (highlight, select) does not run
            event.stop()
            return
        self._clicks = event.chain

    def _on_leave(self, event: events.Leave) -> None:
        self._clicks = 0  # a chain goes on only where it began

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
