"""What a form over the experiment needs to know about one key, read from the schema itself.

The Compose screen shows a key's default, its choices and its bounds; reading them here (pydantic's
`model_fields`: the default, the Literal values of the annotation, the ge/gt/le/lt constraints)
means a default changed in schema.py changes the form too, instead of the form keeping a copy that
drifts. Torch-free, like the rest of engine.config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic_core import PydanticUndefined

from engine.config.arch import config_defaults
from engine.config.explain import SECTIONS


@dataclass(frozen=True)
class KeySpec:
    """One schema key as a form shows it."""

    section: str
    key: str
    required: bool
    default: Any  # None when the key has no default (required) or defaults to None
    choices: tuple[Any, ...]  # the Literal values its type allows (a choice field); () when free
    kind: str  # int | float | bool | str | ints | strs | choice | auto_int | gpus | size | other
    lower: float | None = None
    lower_open: bool = False  # gt rather than ge
    upper: float | None = None
    upper_open: bool = False  # lt rather than le

    def bounds_text(self) -> str:
        """'0 to < 0.5', '> 0', '' when unbounded: the range a number must fall in."""
        lo = "" if self.lower is None else f"{'> ' if self.lower_open else ''}{_num(self.lower)}"
        hi = "" if self.upper is None else f"{'< ' if self.upper_open else ''}{_num(self.upper)}"
        if lo and hi:
            return f"{lo} to {hi}"
        return lo and (lo if self.lower_open else f">= {lo}") or (hi and (hi if self.upper_open else f"<= {hi}"))


def key_spec(section: str, key: str) -> KeySpec:
    """The schema's facts about `key` of `section` (see SECTIONS); KeyError for a key it lacks."""
    model = SECTIONS[section]
    info = model.model_fields[key]
    required = info.is_required()
    if required:
        default = None
    elif info.default_factory is not None:
        default = info.default_factory()  # type: ignore[call-arg]
    else:
        default = None if info.default is PydanticUndefined else info.default
    bounds: dict[str, Any] = {}
    for m in info.metadata:  # annotated_types.Ge / Gt / Le / Lt, one constraint each
        for attr in ("ge", "gt", "le", "lt"):
            if getattr(m, attr, None) is not None:
                bounds[attr] = getattr(m, attr)
    kind = _kind(info.annotation)
    # a choice's values; for a list of names (axes), the names each item may be
    item = get_args(info.annotation)[0] if get_origin(info.annotation) is list else None
    choices = _literals(info.annotation) if kind == "choice" else _literals(item) if kind == "strs" and item else ()
    return KeySpec(section, key, required, default, choices,
                   kind,
                   lower=bounds.get("ge", bounds.get("gt")), lower_open="gt" in bounds,
                   upper=bounds.get("le", bounds.get("lt")), upper_open="lt" in bounds)


def section_defaults(section: str, keys: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """{key: the schema's default} for `keys` of `section` (a new experiment's values)."""
    return {k: key_spec(section, k).default for k in keys}


def arch_default(model_type: str, key: str) -> Any:
    """What transformers' config class for `model_type` gives a key left out of `[model].arch`
    (None: its own rule, such as kv heads = heads, or not known)."""
    return config_defaults(model_type).get(key)


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else f"{x:_}" if abs(x) >= 100_000 else str(x)


def _args(t: Any) -> list[Any]:
    """The members of a union (X | None included), or [t]."""
    args = get_args(t)
    return [a for a in args if a is not type(None)] if args and get_origin(t) is not Literal \
        and get_origin(t) not in (list, tuple, dict) else [t]


def _literals(t: Any) -> tuple[Any, ...]:
    out: list[Any] = []
    for a in _args(t):
        if get_origin(a) is Literal:
            out += get_args(a)
    return tuple(out)


def _kind(t: Any) -> str:
    """How a form edits the key: what its type (less None) is made of."""
    members = _args(t)
    if all(get_origin(a) is Literal for a in members):
        return "choice"
    plain = [a for a in members if get_origin(a) is not Literal]
    has_literal = len(plain) < len(members)
    if plain == [int] and has_literal:
        return "auto_int"  # micro_batch_size: a number or "auto"
    if has_literal and len(plain) == 1 and get_origin(plain[0]) is list:
        return "gpus"  # "all" or [0, 1]
    if set(plain) == {int, float, str}:
        return "size"  # target_params: a count, a fraction or "4.5B"
    if len(plain) == 1:
        a = plain[0]
        if a in (bool, int, float, str):
            return a.__name__
        if get_origin(a) is list and get_args(a) in ((int,), (str,)):
            return "ints" if get_args(a) == (int,) else "strs"
        if get_origin(a) is list and get_origin(get_args(a)[0]) is Literal:
            return "strs"  # axes, splits: names from a fixed set
    return "other"
