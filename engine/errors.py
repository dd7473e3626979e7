"""The exceptions every room of the engine raises; torch-free, imported by data, config and stage code.

A `ConfigError` or `UserError` is a mistake the user can fix: the CLI prints its one line and exits 2.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A user mistake in an experiment file or override: one line, exit code 2."""


class UserError(Exception):
    """A mistake found while a stage runs (bad data path, wrong tokenizer...): one line, exit code 2."""


class Cancelled(BaseException):
    """Raised in a stage's main thread on SIGTERM/SIGINT; training saves a checkpoint and exits."""
