"""Which form field a validation message is about: `check`'s one line names the key first
("exp.toml: prune[depth].num_layers: ..."), so Compose can mark that field."""

from __future__ import annotations

import re

_KEY = re.compile(r"(?:prune\[(?P<student>[^\]]+)\]\.)?(?P<key>[A-Za-z_][\w.]*):\s")


def error_field(message: str, source: str) -> tuple[str | None, str] | None:
    """(the student's name or None, the dotted key) of the message's key; None when it names none."""
    rest = message.removeprefix(f"{source}: ") if source else message
    m = _KEY.match(rest)
    return (m.group("student"), m.group("key")) if m else None
