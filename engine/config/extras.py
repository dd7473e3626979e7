"""Whether an optional extra can run as installed: a package's presence and version, read from its
metadata without importing it (or torch), so that the schema can refuse a key as the file is read.
engine/config/liger_install.py names Liger-Kernel's (kernels = "liger"); TORCHAO below is torchao's
(optimizer_states = "int8", engine/training/int8_moments.py; float8 = true, engine/models/float8.py)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import sys
from dataclasses import dataclass
from types import ModuleType

from engine.errors import UserError

# loggers that torchao's loader writes to about CUDA extensions a build lacks (they would reach every stage log)
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


@dataclass(frozen=True)
class Extra:
    module: str  # the import name
    dist: str  # the distribution's name on PyPI
    min_version: tuple[int, ...]
    extra: str  # slimlab's extra that installs it
    instead: str  # the setting that needs no package, for the error line

    def installed_version(self) -> str | None:
        """The package's version, or None when it is not installed (no import of it)."""
        if importlib.util.find_spec(self.module) is None:
            return None
        try:
            return importlib.metadata.version(self.dist)
        except importlib.metadata.PackageNotFoundError:  # an unpackaged checkout on sys.path
            return "0+unknown"

    def problem(self, version: str | None) -> str | None:
        """Why the extra cannot run with `version` installed (one line with the fix), else None."""
        install = f'pip install "slimlab[{self.extra}]"'
        if version is None:
            return f"{self.dist} is not installed; {install}, or set {self.instead}"
        if version != "0+unknown" and version_tuple(version) < self.min_version:
            need = ".".join(map(str, self.min_version))
            return f"{self.dist} {version} is older than {need}, which slimlab needs; pip install -U \"slimlab[{self.extra}]\""
        return None

    def install_problem(self) -> str | None:
        """`problem` of the version installed here (None: it can run)."""
        return self.problem(self.installed_version())

    def load(self, module: str, setting: str) -> ModuleType:
        """Import `module` (of this package) with its loader's log messages held back; a UserError naming
        `setting` and the fix when it does not import (installed for another torch, say): one line, before
        training, not a traceback at the first step."""
        quiet = [logging.getLogger(name) for name in QUIET_LOGGERS]
        levels = [log.level for log in quiet]
        for log in quiet:
            log.setLevel(logging.ERROR)
        try:
            __import__(module)  # (the import statement's own hook, as `from torchao... import` goes through)
            return sys.modules[module]
        except Exception as e:
            raise UserError(f"{setting}: {self.dist} does not import here ({type(e).__name__}: {e}); "
                            f'pip install -U "slimlab[{self.extra}]", or set {self.instead}') from e
        finally:
            for log, level in zip(quiet, levels, strict=True):
                log.setLevel(level)


def version_tuple(version: str) -> tuple[int, ...]:
    """"0.18.0+cu128" -> (0, 18, 0): the first three numeric parts, local labels dropped."""
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


# 0.14: the first release whose torchao.optim.quant_utils has the functions engine/training/int8_moments.py
# calls, in the form it calls them (checked from 0.14 to 0.18)
TORCHAO = Extra(module="torchao", dist="torchao", min_version=(0, 14, 0), extra="int8",
                instead='optimizer_states = "bfloat16"')
# float8 = true: torchao.float8's public convert_to_float8_training (checked with 0.18; present since 0.7)
TORCHAO_FLOAT8 = Extra(module="torchao", dist="torchao", min_version=(0, 14, 0), extra="float8",
                       instead="float8 = false")
