"""Messages the TUI's widgets and screens exchange (thread workers post them too: post_message
is thread-safe)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual.message import Message


@dataclass
class OpenRun(Message):
    """Show one run's detail screen (from the runs table, compare, ...)."""

    path: Path
    stage: str | None = None


@dataclass
class EditExperiment(Message):
    """Load an experiment file into Compose; `as_copy`: a run's config, edited under a fresh name."""

    path: Path
    as_copy: bool = False


@dataclass
class StudentRemoved(Message):
    """A student form asks Compose to drop it."""

    student: dict


@dataclass
class FormChanged(Message):
    """A field of the Compose form changed; Compose re-validates (debounced)."""

    key: str
