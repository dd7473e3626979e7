"""`set_text`: a Static's text, rewritten only when it reads differently."""

from __future__ import annotations

from textual.widgets import Static


def set_text(static: Static, markup: str, force: bool = False) -> None:
    """`Static.update`, skipped when the markup is the same as last time (unless `force`: after a
    theme change). Each update re-lays out the whole screen, and the scanner's snapshot that
    triggers these comes every second, mostly with the same text."""
    if force or getattr(static, "_slimlab_markup", None) != markup:
        static._slimlab_markup = markup
        static.update(markup)
