"""Follow a growing text file (a stage's stdout.log) by byte offset, like `tail -f`.

Each `read()` returns only the complete new lines; a partial last line waits for its newline.
The first read starts near the end (a 10 GB log opens instantly). A file that shrinks or is
replaced starts over.
"""

from __future__ import annotations

import os
from pathlib import Path

START_BYTES = 128 * 1024  # how much history the first read shows
MAX_READ = 2 * 1024 * 1024  # per read: a burst larger than this skips ahead (the widget caps lines anyway)


class LogTail:
    def __init__(self, path: str | Path, start_bytes: int = START_BYTES, max_read: int = MAX_READ):
        self.path = Path(path)
        self.start_bytes = start_bytes
        self.max_read = max_read
        self.offset: int | None = None  # None: not opened yet
        self.ino: int | None = None
        self._partial = b""
        self.skipped = 0  # bytes jumped over because they came faster than max_read

    def read(self) -> list[str]:
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        if self.offset is None or st.st_ino != self.ino or st.st_size < self.offset:
            self.ino, self._partial = st.st_ino, b""
            self.offset = max(0, st.st_size - self.start_bytes)
            skip_to_line = self.offset > 0
        else:
            skip_to_line = False
        if st.st_size == self.offset:
            return []
        if st.st_size - self.offset > self.max_read:  # far behind: show the newest part only
            self.skipped += st.st_size - self.max_read - self.offset
            self.offset, self._partial, skip_to_line = st.st_size - self.max_read, b"", True
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(st.st_size - self.offset)
        except OSError:
            return []
        self.offset += len(data)
        if skip_to_line:  # started mid-line: drop the fragment
            nl = data.find(b"\n")
            data = data[nl + 1:] if nl >= 0 else b""
        data = self._partial + data
        end = data.rfind(b"\n") + 1
        self._partial = data[end:]
        if not end:
            return []
        text = data[:end].decode("utf-8", errors="replace")
        # progress bars rewrite their line with \r: keep what the terminal would show
        return [_shown(line) for line in text.split("\n")[:-1]]


def _shown(line: str) -> str:
    line = line.rstrip("\r")
    return line.rsplit("\r", 1)[-1] if "\r" in line else line
