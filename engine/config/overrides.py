"""`--set KEY=VALUE`: dotted keys applied to the raw TOML dict before validation."""

from __future__ import annotations

import sys
from typing import Any

from engine.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def parse_value(text: str) -> Any:
    """An override value as TOML (numbers, booleans, lists), else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict[str, Any], assignment: str, source: str = "--set") -> None:
    """Apply `a.b.c=value` to the raw TOML dict; `prune.<name>.key` addresses a student."""
    if "=" not in assignment:
        raise ConfigError(f"{source}: '{assignment}' is not KEY=VALUE; e.g. --set distill.steps=100")
    key, _, text = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"{source}: empty key in '{assignment}'")
    value = parse_value(text.strip())
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):  # [[prune]] addressed by name
            match = [t for t in node if isinstance(t, dict) and t.get("name") == part]
            if not match:
                names = ", ".join(str(t.get("name")) for t in node if isinstance(t, dict))
                raise ConfigError(f"{source}: no [[prune]] named '{part}' in '{key}'; names: {names}")
            node = match[0]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: '{'.'.join(parts[: i + 1])}' is not a table")
        node = node.setdefault(part, {})
    if not isinstance(node, dict):
        raise ConfigError(f"{source}: '{key}' needs a student name, e.g. prune.width.hidden_size=2048")
    node[parts[-1]] = value
