"""Whether `kernels = "liger"` can run as installed: Liger-Kernel's presence and version, read from the
package metadata without importing it (or torch). The schema asks as the file is read; the kernels
themselves are engine/models/liger.py's."""

from __future__ import annotations

from engine.config.extras import Extra

# 0.8.5: the release checked against transformers 5.x (its patches need >= 5.0)
LIGER = Extra(module="liger_kernel", dist="liger-kernel", min_version=(0, 8, 5), extra="liger",
              instead='kernels = "torch"')


def installed_version() -> str | None:
    """liger-kernel's version, or None when it is not installed (no import of the package)."""
    return LIGER.installed_version()


def install_problem() -> str | None:
    """Why `kernels = "liger"` cannot run here as installed (one line with the fix), else None."""
    return LIGER.problem(installed_version())
