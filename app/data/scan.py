"""The TUI's run scanner is the engine's: engine.contract.scan (the one reader of run directories)."""

from engine.contract import RunInfo, RunScanner, StageInfo, stat_key

__all__ = ["RunInfo", "RunScanner", "StageInfo", "stat_key"]
