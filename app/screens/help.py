"""`?`: the keys of the screen it was opened on first, then every other screen's, read from the
screens' own BINDINGS (so it cannot go stale), and what the state symbols mean."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


def _screens(app_class: type) -> list[tuple[str, type]]:
    from app.screens.compare import CompareScreen
    from app.screens.compose import ComposeScreen
    from app.screens.gpus import GpuScreen
    from app.screens.run_detail import RunDetailScreen
    from app.screens.runs import RunsScreen

    return [("Everywhere", app_class), ("Runs", RunsScreen), ("Run detail", RunDetailScreen),
            ("Compose", ComposeScreen), ("Compare", CompareScreen), ("GPUs", GpuScreen)]


def _keys(binding: Binding) -> str:
    if binding.key_display:
        return binding.key_display
    return " ".join(k.replace("question_mark", "?").replace("slash", "/") for k in binding.key.split(","))


def help_text(app_class: type, current: type | None = None) -> str:
    """The keys of `current` (the screen help was opened on) first, then of `app_class` (the running
    app's class: not imported here, app.main imports this) and of every other screen."""
    from app.data.fmt import STATE_GLYPH

    screens = _screens(app_class)
    screens.sort(key=lambda entry: entry[1] is not current)  # stable: the rest keep their order
    lines = ["[b]slimlab keys[/b]   (mouse: click rows, tabs, buttons; scroll with the wheel)", ""]
    for title, cls in screens:
        lines.append(f"[b $text-primary]{title}[/]" + ("  (this screen)" if cls is current else ""))
        for b in cls.BINDINGS:
            if isinstance(b, Binding) and b.description:
                lines.append(f"  {_keys(b):<14} {b.description}")
        lines.append("")
    lines += ["[b $text-primary]States[/]",
              "  " + "   ".join(f"{glyph} {state}" for state, glyph in STATE_GLYPH.items()),
              "  (Stages column: one symbol per stage, in pipeline order)", "",
              "Lists: ↑/↓ or j/k move, enter opens, g/G first/last.",
              "Forms: tab / shift+tab move between fields (letters and digits type into a focused field,",
              "esc leaves it; ctrl keys work everywhere).",
              "ctrl+q quits too; ctrl+p opens the command palette.   esc closes this help."]
    return "\n".join(lines)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close"),
                Binding("G,end", "scroll('end')", "Last line", show=False),
                Binding("g,home", "scroll('home')", "First line", show=False),
                # a modal screen shuts out the app's bindings: j/k as everywhere
                Binding("j", "app.list_move('down')", show=False), Binding("k", "app.list_move('up')", show=False)]

    def __init__(self, current: type | None = None):
        super().__init__()
        self.current = current  # the screen class help was opened on: its keys come first

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Static(help_text(type(self.app), self.current), id="help-text")

    def action_scroll(self, where: str) -> None:
        body = self.query_one("#help-body", VerticalScroll)
        (body.scroll_end if where == "end" else body.scroll_home)(animate=False)

    def action_close(self) -> None:
        self.dismiss(None)
