"""Whether `kernels = "liger"` can run as installed: Liger-Kernel's presence and version, read from the
package metadata without importing it (or torch). The schema asks as the file is read; the kernels
themselves are engine/models/liger.py's."""

from __future__ import annotations

import importlib.metadata
import importlib.util

MIN_VERSION = (0, 8, 5)  # the release checked against transformers 5.x (its patches need >= 5.0)
INSTALL = 'pip install "slimlab[liger]"'


def installed_version() -> str | None:
    """liger-kernel's version, or None when it is not installed (no import of the package)."""
    if importlib.util.find_spec("liger_kernel") is None:
        return None
    try:
        return importlib.metadata.version("liger-kernel")
    except importlib.metadata.PackageNotFoundError:  # an unpackaged checkout on sys.path
        return "0+unknown"


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def install_problem() -> str | None:
    """Why `kernels = "liger"` cannot run here as installed (one line with the fix), else None."""
    version = installed_version()
    if version is None:
        return f'liger-kernel is not installed; {INSTALL}, or set kernels = "torch"'
    if version != "0+unknown" and _version_tuple(version) < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        return f"liger-kernel {version} is older than {need}, which slimlab needs; pip install -U \"slimlab[liger]\""
    return None
