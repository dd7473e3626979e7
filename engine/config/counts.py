"""`target_params` as written ("4.5B", 81_000_000, 0.6) -> a count or a fraction of the teacher.

Imports nothing of the engine: the config schema validates with it, and engine.search's budget reads
the count with it.
"""

from __future__ import annotations

import math
import re

_SUFFIX = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def parse_param_count(value: int | float | str) -> int | float:
    """An absolute parameter count (int) or a fraction of the teacher (float in (0, 1]).

    ValueError (naming the accepted forms) on anything else.
    """
    forms = 'an absolute count (81_000_000 or "4.5B") or a fraction of the teacher (0.6)'
    raw = value
    if isinstance(value, bool):
        raise ValueError(f"target_params: {value!r} is not a size; give {forms}")
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKMBGT]?)\s*", value.replace("_", ""))
        if m is None:
            raise ValueError(f"target_params: '{value}' is not a size; give {forms}")
        value = float(m.group(1)) * _SUFFIX[m.group(2)] if m.group(2) else float(m.group(1))
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"target_params: {value} must be positive; give {forms}")
    if isinstance(value, float) and value <= 1.0:
        return value
    if isinstance(value, float) and value < 1000 and not isinstance(raw, str):
        raise ValueError(f"target_params: {value:g} is neither a fraction of the teacher (that is at most 1, e.g. "
                         f"0.6) nor a size; for {value:g} billion parameters write \"{value:g}B\"")
    if value < 1000:
        raise ValueError(f"target_params: {value:g} parameters is too small for a language model; give {forms}")
    return int(round(value))
