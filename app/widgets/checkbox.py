"""A Checkbox whose state reads without colour: `▐X▌` on, `▐ ▌` off (Textual draws `▐X▌` for both
and tells them apart by colour only, lost on a monochrome terminal or a screenshot)."""

from __future__ import annotations

from textual.widgets import Checkbox


class StateCheckbox(Checkbox):
    @property
    def BUTTON_INNER(self) -> str:  # noqa: N802 - ToggleButton's name for the mark inside the box
        return "X" if self.value else " "
