"""Pydantic validation errors -> one line naming the key as the user wrote it, and the fix."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.config.schema import (
    DataConfig,
    DistillConfig,
    EvalConfig,
    Experiment,
    FinetuneConfig,
    LaunchConfig,
    ModelConfig,
    PruneConfig,
)
from engine.errors import ConfigError

# a section's name (the first part of a dotted key) -> its model; "" is the file's top level and
# "prune" one [[prune]] table (a student). Also what Compose reads keys from (engine/config/form_spec.py).
SECTIONS: dict[str, type[BaseModel]] = {
    "": Experiment, "model": ModelConfig, "data": DataConfig, "finetune": FinetuneConfig,
    "distill": DistillConfig, "eval": EvalConfig, "launch": LaunchConfig, "prune": PruneConfig,
}


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at the location of an unknown key."""
    section = [p for p in loc[:-1] if isinstance(p, str)]
    model = SECTIONS.get(section[0] if section else "")
    return list(model.model_fields) if model else []


def _dotted(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    """Render a pydantic location as the user wrote it: prune[width].hidden_size."""
    out: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int) and i == 1 and isinstance(raw.get(out[-1]), list):  # [[prune]]: by name
            try:
                out[-1] = f"prune[{raw['prune'][part]['name']}]"
            except (KeyError, IndexError, TypeError):
                out[-1] = f"prune[{part}]"
        elif isinstance(part, int):
            out[-1] = f"{out[-1]}[{part}]"
        elif i > 0 and part in ("function-after", "list[int]", "literal['all']"):
            continue
        else:
            out.append(str(part))
    return ".".join(out)


def _explain(err: dict[str, Any], raw: dict[str, Any]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function"))))
    key = _dotted(loc, raw)
    kind = err["type"]
    if kind == "extra_forbidden":
        bad = str(loc[-1])
        close = difflib.get_close_matches(bad, _valid_keys(loc), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else "valid keys: " + ", ".join(_valid_keys(loc))
        return f"unknown key '{key}'; {hint}"
    if kind == "missing":
        if len(loc) == 1 and loc[0] in ("model", "data"):
            return f"missing required section [{loc[0]}]"
        return f"missing required key '{key}'"
    if kind == "value_error":
        msg = str(err["msg"]).removeprefix("Value error, ")
        prefix = f"{key}." if key and ":" in msg.split(" ", 1)[0] else (f"{key}: " if key else "")
        return f"{prefix}{msg}"
    if kind == "literal_error":
        return f"{key}: {err['msg'].lower()}, got {err['input']!r}"
    got = err.get("input")
    return f"{key}: {err['msg'].lower()} (got {got!r})"


def parse_experiment(raw: dict[str, Any], source: str = "experiment") -> Experiment:
    if "source" in raw:  # a field of Experiment, but set here (where the file came from), never by the file
        raise ConfigError(f"{source}: unknown key 'source' (slimlab records where the file came from "
                          "itself); remove it")
    try:
        exp = Experiment.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(f"{source}: {_explain(first, raw)}") from None
    exp.source = source
    return exp
