"""Reading experiment files (with overrides) into validated `Experiment`s, and writing resolved ones."""

from __future__ import annotations

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
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file; give an experiment .toml file") from None
    _no_bom(text, str(p))
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e}); fix the syntax there") from None


def _no_bom(text: str, source: str) -> None:
    """TOML forbids a byte-order mark, and tomllib calls it an "Invalid statement" at line 1."""
    if text.startswith("\ufeff"):
        raise ConfigError(f"{source}: starts with a UTF-8 byte-order mark (BOM), which TOML does not allow; "
                          "save it as UTF-8 without BOM")


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    return _validated(read_toml(path), str(path), overrides)


def loads_experiment(text: str, source: str = "experiment", overrides: tuple[str, ...] = ()) -> Experiment:
    _no_bom(text, source)
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
    """TOML text of a config dict (tomlkit): dicts become [tables], lists of dicts [[arrays of
    tables]], None values are left out. TypeError for a value TOML cannot hold."""
    import tomlkit  # only where a config is written

    return tomlkit.dumps(_without_none(d))


def _without_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _without_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return [_without_none(x) for x in v]
    return v
