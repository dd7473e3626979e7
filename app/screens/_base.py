"""What every full screen of the TUI shares: a restyle on show only when something changed."""

from __future__ import annotations

from textual.app import App
from textual.types import NoActiveAppError


def css_key(app: App) -> tuple:
    """What the app's stylesheet, once parsed, depends on: the CSS variables (the theme) and every CSS
    source that is not a widget class's scoped default CSS (the app's own stylesheet, screens' CSS,
    unscoped defaults). A scoped default CSS only matches widgets of its class, which are styled as
    they mount, so it is left out: the key does not change each time a widget class is first used."""
    return (app.get_css_variables(),
            {where: src for where, src in app.stylesheet.source.items() if not (src.is_defaults and src.scope)})


# A screen's place among the app's screens (one per mode, plus pushed ones) changes as other screens
# are built; no selector in the app's or Textual's CSS depends on it.
_POSITIONAL = frozenset({"first-child", "last-child", "first-of-type", "last-of-type", "odd", "even"})


class KeepStyles:
    """Mixin for a Screen: skip Textual's restyle of all its widgets when nothing it depends on
    changed since the last one.

    Textual shows a mode's screen (`App.switch_mode`, also `push_screen`) with
    `ScreenResume(refresh_styles=True)`, and the screen then calls `update_node_styles()`, which
    reapplies the whole stylesheet to every widget of the screen: 35-55 ms for Compose's ~135
    widgets on a small CPU, at every switch, the first included. The widgets are already styled: a
    widget is styled when it mounts and again whenever its classes or pseudo-classes change
    (Textual restyles it then, shown or not), so the full restyle is only needed when something the whole screen depends on
    changed: the theme or the stylesheet (`css_key`), the app's and the screen's own classes and
    pseudo-classes (dark/light, app focus, ...), or the terminal size. Those are recorded when the
    screen mounts and at each full restyle; a call that finds them unchanged does nothing. A theme
    switch (ctrl+t) changes them, so every other screen is restyled when next shown."""

    _styled_for: tuple | None = None
    full_restyles = 0  # how many times the whole screen was restyled (tests, benchmarks)

    def _styles_key(self) -> tuple:
        app = self.app
        return (css_key(app), app.current_theme.name, frozenset(app.classes), app.pseudo_classes,
                frozenset(self.classes), self.pseudo_classes - _POSITIONAL, app.size)

    def on_mount(self) -> None:
        """The widgets composed so far were styled as they were registered (and any mounted later
        will be): the restyle Textual asks for at the screen's first show is not needed either."""
        self._styled_for = self._styles_key()

    def update_node_styles(self, animate: bool = True) -> None:
        try:
            key = self._styles_key()
        except NoActiveAppError:
            return
        if key == self._styled_for:
            return
        self._styled_for = key
        self.full_restyles += 1
        super().update_node_styles(animate)


def set_text(static, markup: str, force: bool = False) -> None:
    """`Static.update`, skipped when the markup is the same as last time (unless `force`: after a
    theme change). Each update re-lays out the whole screen, and the scanner's snapshot that
    triggers these comes every second, mostly with the same text."""
    if force or getattr(static, "_slimlab_markup", None) != markup:
        static._slimlab_markup = markup
        static.update(markup)
