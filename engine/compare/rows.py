"""The model rows `compare` renders: engine.contract.compare_rows reads them; a model that results.json
does not size is sized from its config.json by engine.shapes (above the contract, so passed in here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.contract.compare_rows import ModelRow, read_model_rows
from engine.shapes.shape import count_params, shape_from_config


def param_count(cfg: dict[str, Any]) -> int:
    """Parameters of a Llama-family decoder from its config dict (ConfigError when it is not one)."""
    return count_params(shape_from_config(cfg))


def model_rows(run_dir: str | Path) -> list[ModelRow]:
    """The teacher and every student of one run (engine.contract.compare_rows.read_model_rows)."""
    return read_model_rows(run_dir, param_count)
