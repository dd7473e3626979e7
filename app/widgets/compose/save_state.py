"""The label before the file path: "file" while there are edits to save, "saved ✓" once saved.

A save is shown here, in the form's own action row, rather than in a toast: at 80x24 a toast
with the path and the validation message covered half the form (and two saves stacked two).
"""

from __future__ import annotations

from textual.widgets import Label

EDITED = "file"
SAVED = "saved ✓"
SAVED_INVALID = "saved (invalid)"  # the validation line just above says why


class SaveState(Label):
    DEFAULT_CSS = """
    SaveState.-saved { color: $text-success; }
    SaveState.-invalid { color: $text-warning; }
    """

    def __init__(self, **kwargs):
        super().__init__(EDITED, markup=False, **kwargs)

    def saved(self, valid: bool) -> None:
        self.update(SAVED if valid else SAVED_INVALID)
        self.set_class(valid, "-saved")
        self.set_class(not valid, "-invalid")

    def edited(self) -> None:
        if self.has_class("-saved") or self.has_class("-invalid"):  # a key press restyles nothing
            self.update(EDITED)
            self.remove_class("-saved", "-invalid")
