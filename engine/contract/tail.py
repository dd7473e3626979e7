"""Follow a growing text file (a stage's stdout.log) by byte offset, like `tail -f`: the one log
tailer, used by the TUI's log view and by the orchestrator echoing its stages' output.

Each `read()` returns only the complete new lines; a partial last line waits for its newline.
The first read starts near the end (a 10 GB log opens instantly) unless an offset is given. A
file that shrinks or is replaced starts over.
"""

from __future__ import annotations

import os
from pathlib import Path

START_BYTES = 128 * 1024  # how much history the first read shows
MAX_READ = 2 * 1024 * 1024  # per read: a burst larger than this skips ahead (the widget caps lines anyway)


class LogTail:
    def __init__(self, path: str | Path, start_bytes: int = START_BYTES, max_read: int | None = MAX_READ,
                 offset: int | None = None):
        self.path = Path(path)
        self.start_bytes = start_bytes
        self.max_read = max_read  # None: never skip ahead
        self.offset: int | None = offset  # None: not opened yet (start near the end)
        self.ino: int | None = None
        self._partial = b""
        self.skipped = 0  # bytes jumped over because they came faster than max_read

    def read(self) -> list[str]:
        """The complete new lines, each as a terminal would show it (progress bars' \\r rewrites)."""
        text = self.read_text()
        return [_shown(line) for line in text.split("\n")[:-1]] if text else []

    def read_text(self, final: bool = False) -> str:
        """The new text up to its last newline (`final`: all of it, the partial last line too)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return self._flush() if final else ""
        if self.ino is None and self.offset is not None and st.st_size >= self.offset:
            self.ino = st.st_ino  # opened at a given offset: read on from there
        if self.offset is None or st.st_ino != self.ino or st.st_size < self.offset:
            self.ino, self._partial = st.st_ino, b""
            self.offset = max(0, st.st_size - self.start_bytes)
            skip_to_line = self.offset > 0
        else:
            skip_to_line = False
        if st.st_size == self.offset:
            return self._flush() if final else ""
        if self.max_read is not None and st.st_size - self.offset > self.max_read:  # far behind: show the newest part only
            self.skipped += st.st_size - self.max_read - self.offset
            self.offset, self._partial, skip_to_line = st.st_size - self.max_read, b"", True
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(st.st_size - self.offset)
        except OSError:
            return self._flush() if final else ""
        self.offset += len(data)
        if skip_to_line:  # started mid-line: drop the fragment
            nl = data.find(b"\n")
            data = data[nl + 1:] if nl >= 0 else b""
        data = self._partial + data
        end = len(data) if final else data.rfind(b"\n") + 1
        self._partial = data[end:]
        return data[:end].decode("utf-8", errors="replace")

    def _flush(self) -> str:
        data, self._partial = self._partial, b""
        return data.decode("utf-8", errors="replace")


def last_lines(path: str | Path, n: int, max_bytes: int = 8192) -> list[str]:
    """The last `n` lines of a text file (from its last `max_bytes`), as a terminal shows them."""
    return LogTail(path, start_bytes=max_bytes).read()[-n:]


def _shown(line: str) -> str:
    line = line.rstrip("\r")
    return line.rsplit("\r", 1)[-1] if "\r" in line else line
