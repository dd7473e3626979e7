"""The bottom line of every screen: its keys, as one line of text.

Textual's `Footer` is one widget per key and rebuilds them all (remove, mount, style) every time
the screen's bindings are refreshed: at each screen switch and focus change. With ~13 keys that
was 20-40 ms on the event loop per switch, plus ~13 more widgets for every restyle of the
screen. This is one `Static` that re-renders its text only when the keys change; a key is
clickable (it presses the key), a disabled one is dimmed, like Footer's.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.markup import escape
from textual.screen import Screen
from textual.widgets import Static


class KeyBar(Static):
    def __init__(self, **kwargs):
        super().__init__("", markup=True, **kwargs)
        self._text = ""

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self._bindings_changed(self.screen)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def on_resize(self) -> None:
        self._bindings_changed(self.screen)

    def _bindings_changed(self, screen: Screen) -> None:
        if not self.is_attached or screen is not self.screen:
            return
        text = self.keys_text(self.size.width or None)
        if text != self._text:
            self._text = text
            self.update(text)

    def keys_text(self, width: int | None = None) -> str:
        """One entry per action (the first key bound to it), in the order Footer shows them. When
        they do not fit `width`, the app's own keys go first (the screen switches are on the nav bar
        above), except help; what still does not fit is cut, help kept last."""
        entries = self._entries()
        if width is None or _width(entries) <= width:
            return " ".join(e.markup for e in entries)
        entries = [e for e in entries if not e.app_wide or e.action == HELP]
        kept = [e for e in entries if e.action != HELP]
        tail = [e for e in entries if e.action == HELP]
        while kept and _width(kept + tail) > width:
            kept.pop()
        return " ".join(e.markup for e in kept + tail)

    def _entries(self) -> list[_Entry]:
        seen: set[str] = set()
        entries = []
        for namespace, binding, enabled, _tooltip in self.screen.active_bindings.values():
            if not binding.show or binding.action in seen:
                continue
            seen.add(binding.action)
            key = self.app.get_key_display(binding)
            desc = binding.description
            if enabled:
                markup = f"[@click=app.simulate_key({binding.key!r})] {escape(key)} [/]{escape(desc)}"
            else:
                markup = f"[dim] {escape(key)} {escape(desc)}[/]"
            entries.append(_Entry(markup, len(key) + len(desc) + 2, binding.action, namespace is self.app))
        return entries


HELP = "help"


@dataclass(frozen=True)
class _Entry:
    markup: str
    cells: int  # " key desc"
    action: str
    app_wide: bool  # bound on the app (help, quit, the screen switches), not on the screen


def _width(entries: list[_Entry]) -> int:
    return sum(e.cells for e in entries) + max(0, len(entries) - 1)
