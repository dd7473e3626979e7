"""Writing and reading the run directory's files: atomic JSON documents, append-only metrics.jsonl."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from engine.contract.metrics_reader import Change, MetricsCursor
from engine.errors import UserError


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


# ---- atomic writes ------------------------------------------------------------------


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a file so that readers see either the old or the new content, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; others sharing a runs folder must read it
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_json_or_warn(path: str | Path, obj: Any, warned: set[str]) -> bool:
    """write_json for the orchestrator's and a stage's status files, which must not die of a full disk:
    on OSError one warning line per file (until a write succeeds again), and False."""
    key = str(path)
    try:
        write_json(path, obj)
    except OSError as e:
        if key not in warned:
            print(f"warning: cannot write {path}: {e.strerror or e}; going on", file=sys.stderr, flush=True)
            warned.add(key)
        return False
    warned.discard(key)
    return True


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class UnreadableFile(UserError):
    """A run file that exists but cannot be read (permission denied, an I/O error)."""


class DamagedFile(UserError, ValueError):
    """A run file that parses but lacks what its readers need (hand-edited, or from another tool): the CLI
    prints its one line and exits 2; a ValueError too, which the TUI's readers catch and show as unreadable."""


def read_json(path: str | Path) -> dict[str, Any] | None:
    """A JSON document; None when it is missing or not a JSON object (a foreign or damaged file).

    A file that is there but cannot be read raises UnreadableFile (one line naming it): read as
    "missing", a finished stage's status.json would make `run` redo the stage."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    except OSError as e:
        raise UnreadableFile(f"{path}: cannot read it ({e.strerror or e}); check its permissions") from e
    return obj if isinstance(obj, dict) else None


def open_append(path: str | Path, text: bool = False) -> IO[Any]:
    """A run file (a log, metrics.jsonl) opened for appending, never through a symbolic link (O_NOFOLLOW):
    a link planted in a run directory must not make the engine write into its target (OSError ELOOP)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    return os.fdopen(fd, "a", encoding="utf-8") if text else os.fdopen(fd, "ab")


# ---- metrics.jsonl --------------------------------------------------------------------


def append_metrics(path: str | Path, record: dict[str, Any]) -> None:
    """Append one metrics line; non-finite numbers become null (JSON has no NaN)."""
    rec = {"time": now_iso(), **record}
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}
    line = json.dumps(clean, default=_json_default) + "\n"
    with open_append(path, text=True) as f:
        f.write(line)
        f.flush()


def read_metrics(path: str | Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete metric lines from byte `offset`; returns (records, new offset).

    A last line without its newline is not consumed, so a later call picks it up whole; a corrupt
    or ill-typed line (e.g. after a crash mid-write) is skipped, as every reader does: this reads
    through the one metrics reader (engine/contract/metrics_reader.py).
    """
    cursor = MetricsCursor(path)
    if cursor.check() is Change.GONE:
        return [], offset
    cursor.offset = offset
    return list(cursor.records()), cursor.offset


def truncate_metrics_after(path: str | Path, step: int) -> None:
    """On resume: drop lines logged after the checkpoint's step (they will be logged again)."""
    p = Path(path)
    if not p.exists():
        return
    records, _ = read_metrics(p)
    kept = [r for r in records if int(r.get("step", 0)) <= step]
    write_atomic(p, "".join(json.dumps(r) + "\n" for r in kept))
