"""Compose's file on disk changed behind the form (an editor saved it): what a save does then.

The form knows the text it last read from or wrote to its file (`base`). When the file now reads
otherwise, the user picks reload (take the file), overwrite (save the form into the file, keeping
what the editor changed that the form did not: a three-way merge, so keys the form has no field for
survive) or keep both (the form goes to a new file beside it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from app.data.compose import fresh_name, to_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # the engine's own fallback (engine.config.toml_io)
    import tomli as tomllib

_ABSENT = object()


def changed_on_disk(path: Path, known: tuple[Path, str] | None) -> str | None:
    """The file's text when it is not what the form last read or wrote there (None: no conflict).
    A file the form never read (a new form whose name is taken) is a change too."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    if known is not None and known[0] == path and known[1] == text:
        return None
    return text


def merge(base: Any, ours: Any, theirs: Any) -> Any:
    """Three-way merge of parsed TOML values: where the form (ours) left a value as it was in
    `base`, the file's (theirs) is kept, added or dropped; where only the form changed it, the
    form's; where both did, tables merge key by key (students by name, in order) and otherwise
    the form wins. `_ABSENT` stands for a key that is not there."""
    if _same(ours, base):
        return theirs
    if _same(theirs, base):
        return ours
    if isinstance(ours, dict) and isinstance(theirs, dict):
        b = base if isinstance(base, dict) else {}
        out = {}
        for key in [*ours, *(k for k in theirs if k not in ours)]:
            value = merge(b.get(key, _ABSENT), ours.get(key, _ABSENT), theirs.get(key, _ABSENT))
            if value is not _ABSENT:
                out[key] = value
        return out
    if _named_tables(ours) and _named_tables(theirs) and _names(ours) == _names(theirs):
        b = {t.get("name"): t for t in base} if _named_tables(base) else {}
        return [merge(b.get(o.get("name"), {}), o, t) for o, t in zip(ours, theirs, strict=True)]
    return ours


def _same(a: Any, b: Any) -> bool:
    return a is b or (a is not _ABSENT and b is not _ABSENT and a == b)


def _named_tables(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _names(tables: list[dict]) -> list[Any]:
    return [t.get("name") for t in tables]


def overwrite_text(raw: dict[str, Any], base_text: str | None, disk_text: str) -> str:
    """The form saved into the file as it is now on disk: the editor's text edited (its comments
    survive) to hold the merge of the form's and the editor's changes. A file that no longer parses
    is replaced by the form's own text."""
    try:
        theirs = tomllib.loads(disk_text)
    except tomllib.TOMLDecodeError:
        return to_toml(raw, base_text)
    try:
        base = tomllib.loads(base_text) if base_text else {}
    except tomllib.TOMLDecodeError:
        base = {}
    return to_toml(merge(base, raw, theirs), disk_text)


def beside(path: Path) -> Path:
    """A free file name next to `path` (NAME-2.toml, NAME-3.toml, ...) for "keep both"."""
    stem = fresh_name(path.stem, lambda name: path.with_name(f"{name}{path.suffix}").exists())
    return path.with_name(f"{stem}{path.suffix}")
