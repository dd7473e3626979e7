"""Reading experiment files (with overrides) into validated `Experiment`s, and writing resolved ones."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from engine.config.explain import parse_experiment
from engine.config.overrides import apply_override
from engine.config.schema import Experiment


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such file; check the path (experiments live in experiments/*.toml)")
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory; give an experiment .toml file")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e}); fix the syntax there") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file; give an experiment .toml file") from None


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    return _validated(read_toml(path), str(path), overrides)


def loads_experiment(text: str, source: str = "experiment", overrides: tuple[str, ...] = ()) -> Experiment:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML ({e})") from None
    return _validated(raw, source, overrides)


def _validated(raw: dict[str, Any], source: str, overrides: list[str] | tuple[str, ...]) -> Experiment:
    for o in overrides:
        apply_override(raw, o, source=f"{source}: --set")
    return parse_experiment(raw, source=source)


def dumps_toml(d: dict[str, Any]) -> str:
    """Minimal TOML writer for resolved configs (tables, arrays of tables, scalars, lists)."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    def _k(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)

    def table(prefix: str, t: dict[str, Any], array: bool = False) -> None:
        plain = {k: v for k, v in t.items() if not _is_table(v) and v is not None}
        if prefix:
            lines.append(f"\n[[{prefix}]]" if array else f"\n[{prefix}]")
        lines.extend(f"{_k(k)} = {scalar(v)}" for k, v in plain.items())
        for k, v in t.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)
            elif _is_table(v):
                for item in v:
                    table(f"{prefix}.{k}" if prefix else k, item, array=True)

    table("", d)
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table(v: Any) -> bool:
    """Written as a [table] or [[array of tables]]: every dict (sections, and arch, stage_gpus, a
    student's distill overrides), and every non-empty list of dicts."""
    if isinstance(v, dict):
        return True
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)
