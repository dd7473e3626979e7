"""The log tailer lives in the engine's torch-free contract package (engine.contract.tail)."""

from engine.contract.tail import MAX_READ, START_BYTES, LogTail, last_lines

__all__ = ["MAX_READ", "START_BYTES", "LogTail", "last_lines"]
