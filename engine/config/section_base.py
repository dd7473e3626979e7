"""What every section of the experiment schema shares: strict types (TOML's booleans and quoted numbers
are not numbers), no unknown keys, and safe names. Torch-free, like the whole schema."""

from __future__ import annotations

import json
import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, model_validator

MAX_NAME = 100  # characters of a run or student name


def slug(value: str, what: str) -> str:
    """Names become directory names (stages, runs): keep them to safe characters."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        raise ValueError(f"'{value}' is not a valid {what}; use letters, digits, '-', '_' or '.'")
    if len(value) > MAX_NAME:  # file names stop at 255 bytes; stages add a prefix ("distill-")
        raise ValueError(f"'{value[:20]}...' is {len(value)} characters long; keep a {what} to "
                         f"{MAX_NAME} characters at most")
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        """TOML's true/false are not numbers, though pydantic takes `steps = true` as 1 step; nor are
        strings numbers or booleans, though pydantic takes `lr = "0.001"` and `compile = "yes"`: strict
        everywhere, as `arch` is."""
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if field is None:
                    continue
                if _holds_bool(value) and _numbers_only(field.annotation):
                    raise ValueError(f"{key}: {json.dumps(value)} is not a number (true and false are "
                                     "booleans); write a number")
                if _holds_number_text(value) and _numbers_only(field.annotation) and not _takes_str(field.annotation):
                    raise ValueError(f"{key}: {json.dumps(value)} is a string, not a number; write it "
                                     "without quotes")
                if _bool_only(field.annotation) and value is not None and not isinstance(value, bool):
                    raise ValueError(f"{key}: {json.dumps(value)} is not a boolean; write true or false")
        return data


def _holds_bool(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_holds_bool(v) for v in value)
    return isinstance(value, bool)


def _holds_number_text(value: Any) -> bool:
    """A string pydantic would read as a number ("128", "1e-3"); other strings it refuses itself."""
    if isinstance(value, (list, tuple)):
        return any(_holds_number_text(v) for v in value)
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _kinds(t: Any) -> set[Any]:
    """A type annotation and everything inside it (unions, Literal values, list items)."""
    return {t}.union(*(_kinds(a) for a in get_args(t)))


def _takes_str(annotation: Any) -> bool:
    """A field that takes some strings: `micro_batch_size = "auto"`, `gpus = "all"`."""
    return any(k is str or k is Any or isinstance(k, str) for k in _kinds(annotation))


def _bool_only(annotation: Any) -> bool:
    return _kinds(annotation) - {type(None)} == {bool}


def _numbers_only(annotation: Any) -> bool:
    """A field whose type holds int or float but neither bool nor Any: `steps`, `layer_map`, `gpus`."""
    found = _kinds(annotation)
    return bool(found & {int, float}) and not found & {bool, Any}


Dtype = Literal["bfloat16", "float16", "float32"]
