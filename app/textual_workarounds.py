"""Every reach into Textual's internals, and the app's GC tuning: the TUI's performance workarounds.

They keep the TUI within its goals (first frame < 0.5 s with 100 runs, the event loop never
blocked > 50 ms) on a small CPU; none of them changes what is drawn. Each overrides or reads
something Textual does not promise: DataTable's private render caches, `Widget.notify_style_update`,
`Screen.update_node_styles`, `App.refresh_css`. So they are on only under the Textual versions they
were checked against (`TESTED_TEXTUAL`); under any other version the app behaves as plain Textual
does (a little slower) instead of breaking. Nothing else in `app/` touches Textual's private API.

`InOrderInput` works around a Textual behaviour (keys of a burst applied out of order) through
public API only, so it stays on under every version; `InOrderKeys` (the App's side of it: focus
moves and every other binding) reads Textual's key dispatch, so it is on only where tested.
"""

from __future__ import annotations

import asyncio
import gc
from importlib.metadata import version

from textual import events
from textual._dispatch_key import dispatch_key
from textual.app import App
from textual.binding import Binding
from textual.types import NoActiveAppError
from textual.widget import Widget
from textual.widgets import DataTable, Input
from textual.widgets.data_table import ColumnKey, RowKey

# (major, minor) of the Textual releases these workarounds were read against and tested with
TESTED_TEXTUAL = ((8, 0), (8, 2))


def _major_minor(text: str) -> tuple[int, int] | None:
    try:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


TEXTUAL_VERSION = version("textual")
_mm = _major_minor(TEXTUAL_VERSION)
ENABLED = _mm is not None and TESTED_TEXTUAL[0] <= _mm <= TESTED_TEXTUAL[1]


# ---- DataTable -------------------------------------------------------------------------------------


class StableTable(DataTable):
    """A DataTable that keeps its rendered rows when a restyle changes nothing it draws with, and
    whose `set_cells` redraws only the row it changes.

    Textual restyles every widget of a screen each time the screen is shown, and DataTable drops
    all its rendered cells and lines on every restyle (`notify_style_update`): showing the Runs
    screen again re-rendered its visible rows cell by cell, 30-80 ms on a small CPU. Here they are
    dropped only when something its styles (and its component classes': header, cursor, zebra
    rows) depend on changed: the theme, the table's classes or pseudo-classes, or its resolved style.

    DataTable's `update_cell` bumps a counter that is part of every render cache key, so one changed
    cell re-rendered every visible row (13 rows x 11 cells, 25-40 ms, every second while a run's
    ETA changes); `set_cells` drops only that row's cached renders."""

    _style_key: tuple | None = None

    def notify_style_update(self) -> None:
        if not ENABLED:
            super().notify_style_update()
            return
        Widget.notify_style_update(self)  # the widget's own style caches: always
        key = (self.app.theme, frozenset(self.classes), frozenset(self.get_pseudo_classes()), self.rich_style)
        if key != self._style_key:
            self._style_key = key
            super().notify_style_update()  # DataTable's: drop the rendered rows

    def set_cells(self, row_key: str, cells: dict[str, object]) -> None:
        """Set these cells (column key -> value) of one row, redrawing only that row. Widths are not
        recomputed (the columns have fixed widths), as with `update_cell(..., update_width=False)`."""
        if cells and not (ENABLED and self._set_row_cells(row_key, cells)):
            for col, value in cells.items():
                self.update_cell(row_key, col, value)

    def _set_row_cells(self, row_key: str, cells: dict[str, object]) -> bool:
        """The fast path; False when DataTable's private layout is not the one known here."""
        try:
            rkey = RowKey(row_key)
            row_index = self._row_locations.get(rkey)
            data = self._data[rkey]
            if any(ColumnKey(col) not in self._column_locations for col in cells):
                return False
            cell_cache, row_cache, line_cache, renderables = (
                self._cell_render_cache, self._row_render_cache, self._line_cache, self._row_renderable_cache)
            update_count = self._update_count
        except (AttributeError, KeyError):
            return False
        if row_index is None:
            return True
        for col, value in cells.items():
            data[ColumnKey(col)] = value
        # cell and row renders are keyed by row key first, row renderables by (update count, index),
        # lines by their y in the table (the header included, as in _get_row_region)
        for key in [k for k in cell_cache.keys() if k[0] == rkey]:
            cell_cache.discard(key)
        for key in [k for k in row_cache.keys() if k[0] == rkey]:
            row_cache.discard(key)
        renderables.discard((update_count, row_index))
        region = self._get_row_region(row_index)
        for key in [k for k in line_cache.keys() if region.y <= k[0] < region.bottom]:
            line_cache.discard(key)
        self.refresh_row(row_index)
        return True


# ---- Input ----------------------------------------------------------------------------------------


def _actions_by_key(bindings: list) -> dict[str, str]:
    return {key.strip(): b.action for b in bindings if isinstance(b, Binding) for key in b.key.split(",")}


class InOrderInput(Input):
    """An Input whose editing keys take effect in the order they were typed.

    Textual inserts a printable key as the Input receives it, but runs the Input's key bindings
    (Backspace, Delete, ctrl+w, the arrows, ...) only once the key event has bubbled back up to the
    App. In a burst, several keys in one read (as over SSH, or when pasting), `2`, Backspace, `4`
    gave "2": the 4 was inserted before Backspace ran, which then deleted it. A bare Textual Input
    does the same (8.0-8.2.8). Here the Input runs its own bindings when the key arrives."""

    _ACTIONS = _actions_by_key(Input.BINDINGS)

    async def on_key(self, event: events.Key) -> None:
        action = None if event.is_printable else self._ACTIONS.get(event.key)
        if action is not None:
            event.stop()
            event.prevent_default()
            await self.run_action(action)


KEY_STEP_TIMEOUT_S = 2.0  # a widget that does not get to a key in this long: Textual's own order from there


def _split_alt(event: events.Key) -> list[events.Key]:
    """Esc and a key typed within ESCDELAY (100 ms) reach Textual as one `alt+KEY`: "esc, then 1"
    typed `alt+1` into a field. The app binds no alt keys, so it is esc, then the key."""
    char = event.character
    if not (event.key.startswith("alt+") and char and len(char) == 1 and char.isprintable()):
        return [event]
    from textual.keys import _character_to_key

    return [events.Key("escape", "\x1b"), events.Key(char if char.isalnum() else _character_to_key(char), char)]


def _unmap_esc_characters() -> None:
    """Textual reads esc followed by a digit (or `-`, `=`, `§`) in one read as the character that
    WezTerm on macOS sends for Option+key: "esc, then 1" typed `¡` into the field. Without those
    entries the parser reports `alt+1`, which InOrderKeys reads as esc, then 1."""
    from textual._ansi_sequences import ANSI_SEQUENCES_KEYS

    for seq in [k for k, v in ANSI_SEQUENCES_KEYS.items() if len(k) == 2 and k[0] == "\x1b" and isinstance(v, str)]:
        del ANSI_SEQUENCES_KEYS[seq]


async def _handled_queued(node: Widget) -> bool:
    """Wait until `node` has handled every message queued to it so far; False if it cannot (closed,
    or stuck past KEY_STEP_TIMEOUT_S: a safety net, never reached by a key that is handled)."""
    # a bare future and a timer handle: asyncio.wait_for costs a task per call, per key
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()

    def finish(ok: bool) -> None:
        if not done.done():
            done.set_result(ok)

    if not node.call_later(finish, True):
        return False
    timer = loop.call_later(KEY_STEP_TIMEOUT_S, finish, False)
    try:
        return await done
    finally:
        timer.cancel()


class InOrderKeys:
    """Mixin for the App: each key is handled to its end before the next one is looked at.

    Textual forwards a key to the focused widget's queue and runs the bindings (Tab's focus move,
    esc, a choice field's space, screen keys) only when the key has bubbled back up to the App,
    through every parent's queue; meanwhile the keys behind it were already forwarded to the widget
    that had focus. In a burst (a loaded box, SSH, a paste), `6 Tab 6 Tab 2` typed 662 into one field
    and `a b Tab c d` gave "abcd". Here the App forwards a key, waits until the focused widget and
    each parent in turn have handled it (or one stopped it), runs the bindings itself, and only then
    takes the next key; the copy of the key that reaches the App later is dropped. A letter typed
    into a field goes on at once (an Input takes every printable key: nothing behind it can overtake
    it, since the key after it waits for the field's queue in turn)."""

    _keys_done: dict[int, events.Key] | None = None  # handled here; their bubbled copies are dropped

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if ENABLED:
            _unmap_esc_characters()

    async def on_event(self, event: events.Event) -> None:
        if ENABLED and isinstance(event, events.Key):
            if not event.is_forwarded:
                for key in _split_alt(event):
                    await self._key_in_order(key)
                return
            if self._keys_done and self._keys_done.pop(id(event), None) is event:
                return
        await super().on_event(event)

    async def _key_in_order(self, event: events.Key) -> None:
        app: App = self  # type: ignore[assignment]
        # what App.on_event does before forwarding a key
        app.app_focus = True
        screen = app.screen
        if screen.maximized is not None and event.key == "escape" and app.escape_to_minimize:
            screen.minimize()
            return
        if app.focused is not None:
            screen._clear_tooltip()
        if await app._check_bindings(event.key, priority=True):
            return
        target = app.focused or screen
        path = [target, *(n for n in target.ancestors if n is not app)] if target is not screen else [screen]
        # a message whose sender is a node's parent stops there: the App, for a key posted by the App
        event.set_sender(None)  # type: ignore[arg-type]
        target._forward_event(event)
        if event.is_printable and isinstance(target, Input):
            return  # an Input types every printable key and stops it there: the next key may go at once
        for node in path:
            if not await _handled_queued(node):
                return  # Textual's order from here: the key's copy reaching the App runs the bindings
            if event._stop_propagation:
                return
        if self._keys_done is None:
            self._keys_done = {}
        elif len(self._keys_done) > 64:  # a copy that never came (its screen went away)
            self._keys_done.pop(next(iter(self._keys_done)))
        self._keys_done[id(event)] = event
        # the App's own handling of a key that bubbled up to it: bindings from the focused widget up
        if not await app._check_bindings(event.key):
            await dispatch_key(app, event)


# ---- screens and the stylesheet -----------------------------------------------------------------


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
    widgets on a small CPU, at every switch, the first included. The widgets are already styled (a
    widget is styled when it mounts and whenever its classes or pseudo-classes change), so the full
    restyle is only needed when something the whole screen depends on changed: the theme or the
    stylesheet (`css_key`), the app's and the screen's classes and pseudo-classes, or the terminal
    size. Those are recorded when the screen mounts and at each full restyle."""

    _styled_for: tuple | None = None

    def _styles_key(self) -> tuple:
        app = self.app
        return (css_key(app), app.current_theme.name, frozenset(app.classes), app.pseudo_classes,
                frozenset(self.classes), self.pseudo_classes - _POSITIONAL, app.size)

    def on_mount(self) -> None:
        """The widgets composed so far were styled as they were registered (and any mounted later
        will be): the restyle Textual asks for at the screen's first show is not needed either."""
        if ENABLED:
            self._styled_for = self._styles_key()

    def update_node_styles(self, animate: bool = True) -> None:
        if ENABLED:
            try:
                key = self._styles_key()
            except NoActiveAppError:
                return
            if key == self._styled_for:
                return
            self._styled_for = key
        super().update_node_styles(animate)


class KeepCss:
    """Mixin for the App: Textual's `refresh_css`, skipped when nothing it depends on changed.

    Textual calls it at the first and second show of every mode's screen: a reparse of every CSS
    source (~50 ms) plus a restyle of the current screen, on the event loop. It is needed only when
    the CSS variables (the theme) or the app's own stylesheet change (`css_key`); widgets of classes
    mounted since are styled as they mount, and a screen shown after a theme change is restyled then
    (`KeepStyles`)."""

    _css_key: tuple | None = None

    def refresh_css(self, animate: bool = True) -> None:
        if ENABLED:
            key = css_key(self)
            if key == self._css_key:
                return
            self._css_key = key
        super().refresh_css(animate)


# ---- the cyclic garbage collector -----------------------------------------------------------------

# A screen shown for the first time is built with the cyclic GC off, and what it allocated is
# frozen (gc.freeze) this long after: widgets live as long as the app, and full GC passes over
# them later stalled screen switches by 50-200 ms.
FREEZE_AFTER_BUILD_S = 0.6
# Once start-up is frozen, Python's automatic full (generation-2) GC passes are turned off and the
# app runs one itself this often, in an event-loop turn of its own: a full pass (7-25 ms) started by
# whatever allocation crossed the threshold was often inside a 25-40 ms redraw, together over 50 ms.
FULL_GC_EVERY_S = 10.0
NO_AUTO_FULL_GC = 1_000_000  # generation-2 threshold: never reached (the app collects it itself)


class GcTuning:
    """The app's cyclic-GC policy. `python -m app` and `main()` start with the GC off (start-up
    allocates a lot and lives as long as the app); `freeze_startup` (from the warm-up thread) freezes
    what is alive then and turns it back on; `own_full_passes` moves the full passes to a timer;
    `building_screen` turns it off while a new screen is built; `restore` undoes it all."""

    def __init__(self, app: App):
        self.app = app
        self.started = False  # startup frozen: screens built later are frozen too
        self.threshold: tuple[int, int, int] | None = None  # Python's, while the app runs full passes

    def freeze_startup(self) -> None:
        gc.freeze()
        gc.enable()
        self.started = True

    def own_full_passes(self) -> None:
        if self.threshold is None:
            self.threshold = gc.get_threshold()
            gc.set_threshold(self.threshold[0], self.threshold[1], NO_AUTO_FULL_GC)
            self.app.set_interval(FULL_GC_EVERY_S, self.full_pass)

    def full_pass(self) -> None:
        if gc.isenabled():  # off while a new screen is built
            gc.collect()

    def building_screen(self) -> None:
        if self.started and gc.isenabled():
            gc.disable()
            self.app.set_timer(FREEZE_AFTER_BUILD_S, self._freeze_built)

    @staticmethod
    def _freeze_built() -> None:
        gc.freeze()
        gc.enable()

    def restore(self) -> None:
        if self.threshold is not None:
            gc.set_threshold(*self.threshold)
            self.threshold = None
