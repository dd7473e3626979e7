"""How cells look: state colours from the current theme's text colours (so light and dark both stay
readable), and `cell_look`, what a cell draws."""

from __future__ import annotations

from itertools import groupby

from rich.text import Text
from textual.app import App
from textual.markup import escape

from app.data.fmt import STATE_GLYPH

_STATE_VAR = {"running": "text-primary", "succeeded": "text-success", "failed": "text-error",
              "cancelled": "text-warning"}


def state_style(app: App, state: str) -> str:
    var = _STATE_VAR.get(state)
    if var is None:
        return "dim"
    color = app.theme_variables.get(var)
    return f"bold {color}" if color and state in ("running", "failed") else (color or "")


def state_text(app: App, state: str, label: str | None = None) -> Text:
    return Text(f"{STATE_GLYPH.get(state, '?')} {label or state}", style=state_style(app, state))


def run_state_text(app: App, run) -> Text:
    """A run's state as shown: "cancelling…" between a confirmed cancel (here, or a stage reporting
    one: RunInfo.cancelling) and the run's end."""
    if run.state == "running" and (run.path in getattr(app, "cancelling", ()) or getattr(run, "cancelling", False)):
        return state_text(app, "cancelled", "cancelling…")
    return state_text(app, run.state)


def run_state_markup(app: App, run) -> str:
    """The same, as markup for a title."""
    text = run_state_text(app, run)
    return f"[{text.style}]{escape(text.plain)}[/]" if text.style else escape(text.plain)


def error_markup(state: str, error: str | None) -> str:
    """A run's or stage's error: red when it failed; a cancel's reason ("cancelled by SIGTERM") is
    not an error, and is shown dimmed."""
    if not error:
        return ""
    return f"[$text-error]{escape(error)}[/]" if state == "failed" else f"[dim]{escape(error)}[/]"


def warning_markup(stage: str | None, warning: str | None) -> str:
    """A stage's warning (the orchestrator's divergence warning), in the theme's warning colour."""
    if not warning:
        return ""
    return f"[$text-warning]⚠ {escape(f'{stage}: ' if stage else '')}{escape(warning)}[/]"


def warned_stages_markup(run) -> str:
    """A short title note naming a run's stages with a warning ("⚠ val loss rose: distill-width")."""
    names = [s for s, _ in run.warnings]
    return f"  [$text-warning]⚠ val loss rose: {escape(', '.join(names))}[/]" if names else ""


def stage_strip(app: App, states: list[str], width: int | None = None) -> Text:
    """One glyph per stage: ✓✓●○○. With more stages than `width`, each run of one state is its count
    and glyph (✓✓✓✓✓●○○○ -> 5✓●3○): cut at the width, a 9-stage run looked finished while its
    eighth stage ran."""
    t = Text()
    if width is None or len(states) <= width:
        for s in states:
            t.append(STATE_GLYPH.get(s, "?"), style=state_style(app, s))
        return t
    for s, group in groupby(states):
        n = len(list(group))
        t.append(f"{n if n > 1 else ''}{STATE_GLYPH.get(s, '?')}", style=state_style(app, s))
    return t


def cell_look(cell: Text | str) -> tuple:
    """What a cell draws: its text, style and spans (Text's == leaves the style out)."""
    return (cell.plain, cell.style, cell.spans) if isinstance(cell, Text) else (cell,)
