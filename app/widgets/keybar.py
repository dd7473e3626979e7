"""The bottom line of every screen: its keys, as one line of text.

Textual's `Footer` is one widget per key and rebuilds them all (remove, mount, style) every time
the screen's bindings are refreshed: at each screen switch and focus change. With ~13 keys that
was 20-40 ms on the event loop per switch, plus ~13 more widgets for every restyle of the
screen. This is one `Static` that re-renders its text only when the keys change; a key is
clickable (it presses the key), a disabled one is dimmed, like Footer's.
"""

from __future__ import annotations

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

    def _bindings_changed(self, screen: Screen) -> None:
        if not self.is_attached or screen is not self.screen:
            return
        text = self.keys_text()
        if text != self._text:
            self._text = text
            self.update(text)

    def keys_text(self) -> str:
        """One entry per action (the first key bound to it), in the order Footer shows them."""
        seen: set[str] = set()
        parts = []
        for _namespace, binding, enabled, _tooltip in self.screen.active_bindings.values():
            if not binding.show or binding.action in seen:
                continue
            seen.add(binding.action)
            key = escape(self.app.get_key_display(binding))
            desc = escape(binding.description)
            if enabled:
                parts.append(f"[@click=app.simulate_key({binding.key!r})] {key} [/]{desc}")
            else:
                parts.append(f"[dim] {key} {desc}[/]")
        return " ".join(parts)
