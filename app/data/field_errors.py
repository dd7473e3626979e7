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


def student_errors(messages: list[str], source: str) -> dict[str, str]:
    """{student name: "key: what is wrong"} for the messages about a student (the first about each),
    shown in that student's own box: at 80x24 the form's message line is a screen away from it."""
    out: dict[str, str] = {}
    for message in messages:
        rest = message.removeprefix(f"{source}: ") if source else message
        m = _KEY.match(rest)
        if m and m.group("student") is not None:
            out.setdefault(m.group("student"), rest[m.start("key"):])
    return out
