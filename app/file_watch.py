"""The TUI's one watcher: "files of run R changed" messages for the screens that subscribed.

The App owns one WatchService and one thread (SlimlabApp._watch_loop) that runs the run-list scan and
`poll` at the pace the shown screens ask for. A screen subscribes with `watch(self, files, interval)`,
is paused while another screen is shown (`WatchedScreen` does that) and gets `FilesChanged` on its own
message queue; it reads the files in a worker of its own (app.data.watcher.DrainQueue), never here,
so a slow read holds up no other screen's news.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from textual import events
from textual.message import Message
from textual.message_pump import MessagePump

from app.data.watcher import Change, Watch, Watcher


@dataclass
class FilesChanged(Message):
    """Watched files that were created, modified or deleted since the screen last heard."""

    changes: tuple[Change, ...]

    @property
    def paths(self) -> set[Path]:
        return {c.path for c in self.changes}


class WatchService:
    def __init__(self) -> None:
        self.watcher = Watcher()
        self._wake = threading.Event()

    # ---- the event loop's side ---------------------------------------------------------------------
    def watch(self, owner: MessagePump, files: Iterable[Path | None], interval: float) -> None:
        """What `owner` watches from now on (a changed set is looked at right away)."""
        if self.watcher.watch(owner, Watch.of(files, interval)):
            self._wake.set()

    def unwatch(self, owner: MessagePump) -> None:
        self.watcher.unwatch(owner)

    def pause(self, owner: MessagePump) -> None:
        self.watcher.pause(owner)

    def resume(self, owner: MessagePump) -> None:
        self.watcher.resume(owner)
        self._wake.set()

    def poke(self) -> None:
        """Look at every watched file now instead of at its next tick (after a launch, a cancel)."""
        self.watcher.hurry()
        self._wake.set()

    # ---- the thread's side -------------------------------------------------------------------------
    def poll(self, now: float) -> int:
        """Stat what is due and post each subscriber its news; returns how many were told. A screen
        that was removed without unsubscribing is dropped, never posted to."""
        told = 0
        for owner, changes in self.watcher.poll(now).items():
            if not getattr(owner, "is_attached", False):
                self.watcher.unwatch(owner)
                continue
            owner.post_message(FilesChanged(tuple(changes)))  # thread-safe
            told += 1
        return told

    def sleep(self, until: float | None, now: float) -> None:
        """Wait until `until` (monotonic; None: until poked) or a poke, whichever comes first."""
        self._wake.wait(None if until is None else max(0.0, until - now))
        self._wake.clear()


class WatchedScreen:
    """Mixin for a Screen that watches files: its subscription pauses while another screen is shown
    (it costs no stat then and gets no message) and ends with the screen. The screen calls
    `self.app.files.watch(self, ...)` with what it wants; on resume it hears what changed meanwhile."""

    def on_screen_suspend(self, event: events.ScreenSuspend) -> None:
        self.app.files.pause(self)

    def on_screen_resume(self, event: events.ScreenResume) -> None:
        self.app.files.resume(self)

    def on_unmount(self, event: events.Unmount) -> None:
        self.app.files.unwatch(self)
