"""Which watched files changed since a subscriber last heard: the TUI's one stat bookkeeping.

Pure Python, no Textual (app/file_watch.py runs it in a thread and posts the messages). Subscribers
(screens) say which files they care about; `poll` stats each watched path once, however
many subscribers share it, and tells each subscriber what moved since *it* last heard. A paused
subscriber (a screen not shown) costs nothing and, once resumed, hears the net change at its next poll.

A file's key is (inode, mtime_ns, size): a write, an append or an atomic replace moves it; a missing
file's is None. Which runs and stages exist is the run scanner's business (engine.contract.RunScanner,
run by the same service), not this one's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

Key = tuple[int, int, int] | None
UNSEEN = object()  # a subscriber has not heard of this path yet: an existing one is news ("created")


@dataclass(frozen=True)
class Watch:
    """What one subscriber watches; `interval`: at most this long between two looks (the service
    polls at the smallest one among the active subscribers)."""

    files: frozenset[Path] = frozenset()
    interval: float = 1.0

    @classmethod
    def of(cls, files: Iterable[Path | None], interval: float = 1.0) -> Watch:
        return cls(frozenset(Path(f) for f in files if f is not None), interval)


@dataclass(frozen=True)
class Change:
    path: Path
    kind: str  # "created" | "modified" | "deleted"


def file_key(path: Path) -> Key:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass
class _Sub:
    watch: Watch
    heard: dict[Path, object] = field(default_factory=dict)  # the key each path had when last told
    active: bool = True
    due: float = float("-inf")  # monotonic seconds of its next look


class Watcher:
    """Subscriptions and the stat bookkeeping. Thread-safe: the event loop (re)subscribes, pauses and
    resumes while the service's thread polls."""

    def __init__(self) -> None:
        self._subs: dict[Hashable, _Sub] = {}
        self._lock = threading.Lock()

    def watch(self, owner: Hashable, watch: Watch) -> bool:
        """Subscribe `owner` (or change what it watches); True when that is news. Paths it already
        watched keep what it heard; new ones are told at the next poll if they exist."""
        with self._lock:
            sub = self._subs.get(owner)
            if sub is None:
                self._subs[owner] = _Sub(watch)
            elif sub.watch != watch:
                sub.heard = {p: k for p, k in sub.heard.items() if p in watch.files}
                sub.watch, sub.due = watch, float("-inf")  # looked at on the next poll
            else:
                return False
            return True

    def unwatch(self, owner: Hashable) -> None:
        with self._lock:
            self._subs.pop(owner, None)

    def pause(self, owner: Hashable) -> None:
        with self._lock:
            if owner in self._subs:
                self._subs[owner].active = False

    def resume(self, owner: Hashable) -> None:
        with self._lock:
            if owner in self._subs:
                sub = self._subs[owner]
                sub.active, sub.due = True, float("-inf")

    def hurry(self) -> None:
        """Every active subscription is due at the next poll (files are known to have moved)."""
        with self._lock:
            for sub in self._subs.values():
                sub.due = float("-inf")

    def next_due(self) -> float | None:
        """When the next poll has something to look at (monotonic seconds); None: nothing is watched."""
        with self._lock:
            return min((s.due for s in self._subs.values() if s.active and s.watch.files), default=None)

    def poll(self, now: float) -> dict[Hashable, list[Change]]:
        """Look at the paths of every active subscription due at `now` (each path stat'ed once) and
        return, per subscriber, what changed since it last heard (subscribers with no news left out)."""
        with self._lock:
            due = [(o, s) for o, s in self._subs.items() if s.active and s.due <= now]
            for _, s in due:
                s.due = now + s.watch.interval
            files = {p for _, s in due for p in s.watch.files}
        keys = {p: file_key(p) for p in files}  # outside the lock: a slow disk blocks no (un)subscribe
        out: dict[Hashable, list[Change]] = {}
        with self._lock:
            for owner, s in due:
                if self._subs.get(owner) is not s or not s.active:
                    continue  # unsubscribed or paused meanwhile: it hears this on resume
                news = []
                for p in s.watch.files:
                    if p not in keys:
                        continue  # watched since the stat above: next poll
                    before, after = s.heard.get(p, UNSEEN), keys[p]
                    if before == after or (before is UNSEEN and after is None):
                        s.heard[p] = after
                        continue
                    s.heard[p] = after
                    kind = "deleted" if after is None else ("created" if before in (None, UNSEEN) else "modified")
                    news.append(Change(p, kind))
                if news:
                    out[owner] = sorted(news, key=lambda c: str(c.path))
        return out


class DrainQueue:
    """Changed paths waiting for a screen's reader thread, so that one reader at a time drains them
    (readers keep per-file offsets that two threads must not share) and bursts of changes coalesce."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: set[Path] = set()
        self._dirty = False  # something to do, paths or not (a new selection)
        self._busy = False

    def add(self, paths: Iterable[Path] = ()) -> bool:
        """Queue `paths` (none: just read again); True when no reader is draining, so the caller starts one."""
        with self._lock:
            self._pending.update(paths)
            self._dirty = True
            if self._busy:
                return False
            self._busy = True
            return True

    def take(self) -> set[Path] | None:
        """What changed since the last take; None (and the reader is done) when nothing did."""
        with self._lock:
            if not self._dirty:
                self._busy = False
                return None
            paths, self._pending, self._dirty = self._pending, set(), False
            return paths

    def reset(self) -> None:
        """The reader ended without draining (cancelled, app closing): the next add starts one."""
        with self._lock:
            self._busy = False

    def drain(self, read: Callable[[set[Path]], bool], cancelled: Callable[[], bool]) -> None:
        """The reader thread's loop: `read` each batch of changes until none is left, or until `cancelled()`
        or `read` returns False (the app is closing); then the next add starts a reader again."""
        paths: set[Path] | None = set()
        try:
            while (paths := self.take()) is not None:
                if cancelled() or not read(paths):
                    return
        finally:
            if paths is not None:
                self.reset()
