"""Before `run` writes anything: the run directory's parent can be written, and no entry of the run leads
out of it through a symbolic link (a linked stage folder had unrelated files deleted on a rerun; a
linked run.lock had its target truncated; a linked stdout.log was appended to). No torch import.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from engine.errors import ConfigError


def check_writable(folder: Path, source: str | None, probe: bool) -> None:
    """`folder` (the run directory, or the nearest existing folder above it) takes new files. `probe` (a
    run not made yet): a folder is made and removed at once, which tells /proc or a read-only mount apart
    from a writable folder even for root; an existing run is left untouched (access(2) only)."""
    try:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "permission denied or a read-only file system")
        if probe:
            os.rmdir(tempfile.mkdtemp(prefix=".slimlab-probe-", dir=folder))
    except OSError as e:
        raise ConfigError(f"{source}: cannot write in {folder} ({e.strerror or e}); give --runs-dir (or "
                          "runs_dir) a folder you can write to") from None


def check_links(run_dir: Path, source: str | None) -> None:
    """No entry of the run directory, nor of a stage folder in it, is a link that resolves outside the run."""
    root = Path(run_dir)
    if not root.is_dir():
        return
    inside = root.resolve()
    for entry in _entries(root):
        if not entry.is_symlink():
            continue
        target = entry.resolve()
        if target != inside and inside not in target.parents:
            raise ConfigError(f"{source}: {entry} is a symbolic link to {target}, outside the run directory; "
                              "the engine never writes or deletes through it: replace it with a real "
                              "file or folder (or remove it)")


def _entries(root: Path) -> list[Path]:
    out = []
    for entry in root.iterdir():
        out.append(entry)
        if entry.is_dir() and not entry.is_symlink():
            out += list(entry.iterdir())
    return out
