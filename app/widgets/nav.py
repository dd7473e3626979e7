"""The top line of every screen: the screens (clickable) and the runs directory."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.markup import escape
from textual.widgets import Static

SCREENS = (("runs", "1", "Runs"), ("compose", "2", "Compose"), ("compare", "3", "Compare"), ("gpus", "4", "GPUs"))


class NavBar(Horizontal):
    """slimlab │ 1 Runs │ 2 Compose │ 3 Compare │ 4 GPUs        runs/  ? help"""

    def __init__(self, active: str, **kwargs):
        super().__init__(**kwargs)
        self.active = active

    def compose(self) -> ComposeResult:
        yield Static("slimlab", classes="brand")
        yield Static(self._tabs(), id="nav-tabs", markup=True)
        where = str(self.app.runs_dir)
        where = where if len(where) <= 20 else "…" + where[-19:]
        yield Static(f"{escape(where)}/  [@click=app.help]? help[/]", classes="nav-right", markup=True)

    def on_mount(self) -> None:
        self.app.gpus_signal.subscribe(self, lambda _probe: self.query_one("#nav-tabs", Static).update(self._tabs()))

    def _tabs(self) -> str:
        parts = []
        for mode, key, label in SCREENS:
            if mode == "gpus" and getattr(self.app, "gpu_probe", None) is None:
                continue
            text = f"{key} {label}"
            if mode == self.active:
                parts.append(f"[reverse] {text} [/]")
            else:
                parts.append(f"[@click=app.show('{mode}')] {text} [/]")
        return "".join(parts)
