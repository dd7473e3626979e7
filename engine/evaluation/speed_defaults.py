"""The speed measurement's default batch sizes and lengths per device, torch-free: the eval stage
(speed.py) and the search's speed budgets (engine.search.speed_budget, which `check` and the TUI read)
use these very dicts."""

from __future__ import annotations

from typing import Any

GPU_DEFAULTS: dict[str, Any] = {"batch_sizes": [1, 16], "prompt_tokens": 512, "new_tokens": 128}
CPU_DEFAULTS: dict[str, Any] = {"batch_sizes": [1, 4], "prompt_tokens": 64, "new_tokens": 16}
