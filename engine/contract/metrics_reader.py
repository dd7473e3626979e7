"""The one reader of metrics.jsonl: which lines count, and following a file as it grows.

A line counts when it is a complete JSON object whose known fields have the types the engine writes;
anything else (a line cut by a crash, a hand edit, wrong types) is skipped and the lines around it
still count. A non-finite number reads as null, the way append_metrics writes it ("not finite": a
diverged loss stays visible as such, it does not fall back to an older value).

`MetricsCursor` reads only what was appended since its last call, in chunks (bounded memory for
any file size), leaves a last line without its newline for a later call, and starts over when the
file is replaced (a new inode: resume rewrites it) or shrinks. Torch-free, like all of engine.contract.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any

CHUNK_BYTES = 1 << 20  # read at most this much at a time, however far behind a reader is

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# The fields readers use, with the type the engine writes them in (absent is fine; null: not finite).
_CHECKS: dict[str, Callable[[Any], bool]] = {
    "step": _is_int,
    "tokens": lambda v: v is None or _is_int(v),
    **dict.fromkeys(("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "gpu_mem_gb"),
                    lambda v: v is None or _is_number(v)),
    **dict.fromkeys(("split", "time"), lambda v: isinstance(v, str)),
}


def parse_record(line: bytes | str) -> dict[str, Any] | None:
    """One metrics line as a record, or None when it does not count (see the module's docstring)."""
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):  # junk, bad UTF-8, absurd nesting
        return None
    if not isinstance(rec, dict):
        return None
    for k, v in rec.items():
        if isinstance(v, float) and not math.isfinite(v):  # a literal NaN/Infinity: as the engine writes it
            v = rec[k] = None
        check = _CHECKS.get(k)
        if check is not None and not check(v):
            return None
    return rec


class Change(Enum):
    GONE = "gone"  # no file (yet, or removed while a resume rewrites it)
    RESET = "reset"  # new, replaced or shrunk: what was read before is void, the cursor is at the start
    GROWN = "grown"
    SAME = "same"


class MetricsCursor:
    """Follows one metrics.jsonl: `check()` stats it, then `records()` yields what was appended."""

    def __init__(self, path: str | Path, chunk_bytes: int = CHUNK_BYTES):
        self.path = Path(path)
        self.chunk_bytes = chunk_bytes
        self.ino: int | None = None
        self.offset = 0  # just after the last complete line read
        self.size = 0  # the file's size at the last check: records() reads up to it

    def check(self) -> Change:
        try:
            st = os.stat(self.path)
        except OSError:
            self.ino, self.offset, self.size = None, 0, 0
            return Change.GONE
        self.size = st.st_size
        if st.st_ino != self.ino or st.st_size < self.offset:
            self.ino, self.offset = st.st_ino, 0
            return Change.RESET
        return Change.GROWN if st.st_size > self.offset else Change.SAME

    def records(self) -> Iterator[dict[str, Any]]:
        """The records of the complete lines between the cursor and the size seen by `check()`, a chunk
        at a time; the cursor moves past a chunk once its records were yielded (so read them all)."""
        for lines in self._line_chunks():
            for line in lines:
                rec = parse_record(line)
                if rec is not None:
                    yield rec

    def _line_chunks(self) -> Iterator[list[bytes]]:
        if self.offset >= self.size:
            return
        try:
            f = open(self.path, "rb")
        except OSError:
            return
        with f:
            if os.fstat(f.fileno()).st_ino != self.ino:
                return  # replaced since check(): the next check starts over
            f.seek(self.offset)
            pending = b""  # the start of a line that goes on in the next chunk
            while (want := self.size - self.offset - len(pending)) > 0:
                data = f.read(min(self.chunk_bytes, want))
                if not data:
                    return
                buf = pending + data
                end = buf.rfind(b"\n") + 1
                pending = buf[end:]
                if end:
                    lines = buf[:end - 1].split(b"\n")
                    del buf, data
                    yield lines
                    self.offset += end

    def tail_lines(self, nbytes: int) -> tuple[list[bytes], int]:
        """Skip to the end: the complete lines in the last `nbytes` seen by `check()` (a first one cut by
        that window is dropped) and the byte where they start; the cursor moves after the last one."""
        start = max(0, self.size - nbytes)
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                data = f.read(self.size - start)
        except OSError:
            return [], start
        end = data.rfind(b"\n") + 1
        self.offset = start + end
        if not end:
            return [], start
        lines = data[:end - 1].split(b"\n")
        if start > 0:
            start += len(lines[0]) + 1
            lines = lines[1:]
        return lines, start


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every record of a metrics.jsonl (none when it is missing), one chunk in memory at a time."""
    cursor = MetricsCursor(path)
    if cursor.check() is not Change.GONE:
        yield from cursor.records()


def last_record_before(path: str | Path, end: int, split: str, chunk_bytes: int = CHUNK_BYTES) -> dict[str, Any] | None:
    """The last record of `split` that ends before byte `end` (a line start), searching backwards a chunk
    at a time: validation lines are rare, the latest may be far behind the tail of a long file."""
    marker = json.dumps(split).encode()
    try:
        f = open(path, "rb")
    except OSError:
        return None
    with f:
        pos, carry = end, b""  # carry: the start of the first line of the chunk read last
        while pos > 0:
            start = max(0, pos - chunk_bytes)
            f.seek(start)
            buf = f.read(pos - start) + carry
            first = buf.find(b"\n") + 1 if start else 0  # what comes before `first` goes on before `start`
            rec = _last_in(buf, first, marker, split)
            if rec is not None:
                return rec
            carry, pos = buf[:first], start
    return None


def _last_in(buf: bytes, first: int, marker: bytes, split: str) -> dict[str, Any] | None:
    """The last record of `split` among the complete lines of buf[first:] (buf ends with a newline)."""
    i = buf.rfind(marker, first)
    while i >= 0:
        a, b = buf.rfind(b"\n", 0, i) + 1, buf.find(b"\n", i)
        rec = parse_record(buf[a:b if b >= 0 else len(buf)])
        if rec is not None and rec.get("split") == split:
            return rec
        i = buf.rfind(marker, first, a)
    return None

