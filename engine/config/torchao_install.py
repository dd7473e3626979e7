"""Whether `optimizer_states = "int8"` can run as installed: torchao's presence and version, read from
the package metadata without importing it (or torch). The schema asks as the file is read; the
quantization itself is engine/training/int8_moments.py's."""

from __future__ import annotations

from engine.config.extras import Extra

# 0.14: the first release whose torchao.optim.quant_utils has the functions int8_moments.py calls, in the
# form it calls them (checked up to 0.18)
TORCHAO = Extra(module="torchao", dist="torchao", min_version=(0, 14, 0), extra="int8",
                instead='optimizer_states = "bfloat16"')


def installed_version() -> str | None:
    """torchao's version, or None when it is not installed (no import of the package)."""
    return TORCHAO.installed_version()


def install_problem() -> str | None:
    """Why `optimizer_states = "int8"` cannot run here as installed (one line with the fix), else None."""
    return TORCHAO.problem(installed_version())
