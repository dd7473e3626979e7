"""The Compose form's model: a raw experiment dict edited field by field, validated the way
`slimlab-engine check` validates a file, plus per-student sizes from the teacher's config.json (both
through the engine's Compose preview, engine.compose_preview), plus where hub ids are found.

The form's fields (which keys, how their text parses) are in app/data/form_fields.py.
The raw dict is the source of truth: keys the form has no field for (eval batches, ...) survive
a load/edit/save round trip untouched, and so do a loaded file's comments and key order (the file
is edited with tomlkit, not rewritten).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.data.form_fields import get_key
from engine.compose_preview import StudentSize
from engine.contract import METHODS, WIDTH, PruneMethod, method_or_none

# the training keys a new form fills in (the rest stay empty: their placeholders say the default)
NEW_TRAIN_KEYS = ("steps", "global_batch_size", "micro_batch_size", "lr", "min_lr", "warmup_steps")
NEW_SEQ_LENGTH = 1024  # not the schema's 2048: a first run on a laptop's CPU stays small


def new_experiment() -> dict[str, Any]:
    """What an empty Compose form starts from: the schema's defaults (engine.config.section_defaults),
    so a default changed there shows here; the students are the 8B recipe's until a teacher is named
    (Compose then sizes them from it)."""
    from engine.config import key_spec, section_defaults

    return {
        "name": "my-experiment",
        "runs_dir": key_spec("", "runs_dir").default,
        "model": {"path": "", **section_defaults("model", ("dtype",))},
        # data that needs no network (the hub's wikitext is a field away); the teacher is the user's to name
        "data": {"dataset": "builtin:stdlib-docs", "seq_length": NEW_SEQ_LENGTH},
        "finetune": section_defaults("finetune", NEW_TRAIN_KEYS),
        "prune": [_recipe_student(m) for m in METHODS if m.in_new_form],
        "distill": section_defaults("distill", (*NEW_TRAIN_KEYS, "loss")),
        "eval": section_defaults("eval", ("splits",)),
        "launch": section_defaults("launch", ("gpus", "strategy")),
    }


# a student before its teacher is known: the 8B recipe's (PruneMethod.recipe: keep 16 of 32 layers; ffn
# 14336 -> 9216; half the parameters); new_experiment's width student also has hidden 4096 -> 3072
# (PruneMethod.recipe_hidden)
RECIPE: dict[str, dict[str, Any]] = {m.name: dict(m.recipe) for m in METHODS}
FFN_STEP = 64  # a width student's ffn: a multiple of this (hardware-friendly) when the teacher's is large


def _recipe_student(m: PruneMethod) -> dict[str, Any]:
    """new_experiment's student of `m`: the recipe's, with the recipe's hidden size where it has one."""
    return {**new_student(m.name, []), **({"hidden_size": m.recipe_hidden} if m.recipe_hidden else {})}


def student_targets(method: str, teacher: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """A new student's targets: the recipe's, or sized from the teacher's (layers, hidden, ffn) once
    known by halving the key its method names (PruneMethod.halves): half its layers, half its ffn
    (hidden unchanged); a search asks for half the parameters."""
    m = method_or_none(method)
    if teacher is None or m is None or m.halves is None:
        return dict(RECIPE.get(method, RECIPE[WIDTH.name]))
    layers, _hidden, ffn = teacher
    half = ffn // 2
    halved = {"num_layers": max(1, layers // 2),
              "ffn_hidden_size": half - half % FFN_STEP if half >= 2 * FFN_STEP else max(1, half)}
    return {m.halves: halved[m.halves]}


def is_untouched(student: dict[str, Any]) -> bool:
    """A student still as the form made it before the teacher was known (the user's own numbers are
    never replaced: validation says what is wrong with them)."""
    targets = {k: v for k, v in student.items() if k not in ("name", "method")}
    m = method_or_none(student.get("method"))
    if m is None:
        return False
    recipe = dict(m.recipe)
    extra = {"hidden_size": m.recipe_hidden} if m.recipe_hidden else {}
    return targets in (recipe, {**recipe, **extra})


def too_big(student: dict[str, Any], teacher: tuple[int, int, int]) -> bool:
    """A depth or width student no smaller than its teacher (the recipe's numbers on a small teacher)."""
    layers, hidden, ffn = teacher
    return (student.get("num_layers", 0) >= layers or student.get("ffn_hidden_size", 0) >= ffn
            or student.get("hidden_size", 0) >= hidden)


def new_student(method: str, existing: list[str], teacher: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """A student of `method` named after it (depth, depth2, ...), sized from `teacher` when known."""
    base = method
    n = 2
    name = base
    while name in existing:
        name, n = f"{base}{n}", n + 1
    return {"name": name, "method": method, **student_targets(method, teacher)}


def read_experiment_file(path: str | Path) -> dict[str, Any]:
    """Raw dict of an existing file (ConfigError with check's message when unreadable)."""
    from engine.config import read_toml

    return read_toml(path)


def to_toml(raw: dict[str, Any], original: str | None = None) -> str:
    """The experiment's TOML text: `original` (the text it was loaded from) edited to hold `raw`,
    keeping its comments, layout and key order; without one, written afresh."""
    from engine.config import dumps_toml

    if not original:
        return dumps_toml(raw)
    import tomlkit

    doc = tomlkit.parse(original)
    _edit_table(doc, raw)
    return tomlkit.dumps(doc)


def _edit_table(table: Any, new: dict[str, Any]) -> None:
    """Make a tomlkit table hold `new`, changing only what differs (an unchanged value keeps its
    formatting and comment)."""
    for key in [k for k in table if new.get(k) is None]:
        del table[key]
    for key, value in new.items():
        if value is None:
            continue
        old = table.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            _edit_table(old, value)
        elif _tables(value) and _tables(old) and _names(old) == _names(value):
            for old_item, new_item in zip(old, value, strict=True):  # the same students, in order
                _edit_table(old_item, new_item)
        elif old != value:
            table[key] = value


def _tables(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _names(tables: list[dict]) -> list[Any]:
    return [t.get("name") for t in tables]


def fresh_name(name: str, taken) -> str:
    """`name` with the smallest -N suffix (N >= 2) that `taken(candidate)` says is free: an edited
    copy of a run must not launch into (or over) the run it came from."""
    base = re.sub(r"-\d+$", "", name) or "experiment"
    n = 2
    while taken(f"{base}-{n}"):
        n += 1
    return f"{base}-{n}"


# ---- validation ---------------------------------------------------------------------------


@dataclass
class Validation:
    ok: bool
    message: str  # one line: the ConfigError text, or a summary
    plan: list[str] = field(default_factory=list)
    teacher_params: int | None = None
    teacher_detail: str = ""
    teacher_source: str = ""  # where the teacher comes from: a local folder, the hub cache, the hub
    students: dict[str, StudentSize] = field(default_factory=dict)
    # the teacher's (layers, hidden, ffn) when its config is known, whether or not the students fit it
    teacher_shape: tuple[int, int, int] | None = None
    more: list[str] = field(default_factory=list)  # the other students' errors (`check` stops at the first)


def validate(raw: dict[str, Any], source: str) -> Validation:
    """Validate as `slimlab-engine check` does: the file's exact text through the engine's Compose preview
    (the same loader and plan as `check`, then every student's size), and the hub ids it names. May read
    config.json files: call it from a worker."""
    from engine.compose_preview import preview

    try:
        text = to_toml(raw)
    except TypeError as e:
        return Validation(False, f"{source}: {e}")
    p = preview(text, source)
    result = Validation(p.ok, p.error or f"ok: {len(p.stages)} stages: {', '.join(p.stages)}", plan=p.plan,
                        teacher_params=p.teacher_params, teacher_detail=p.teacher_detail, students=p.students,
                        teacher_shape=p.teacher_shape, more=p.more)
    if p.ok:
        problem, result.teacher_source = check_hub_ids(raw, reach=False)
        if problem:
            result.ok, result.message = False, f"{source}: {problem}"
    return result


# ---- hub ids: a teacher or tokenizer `check` cannot see (it reads local folders only) ------------

_HUB_KEYS = (("model.path", "config.json"), ("model.tokenizer", "tokenizer_config.json"))


def check_hub_ids(raw: dict[str, Any], reach: bool) -> tuple[str | None, str]:
    """(problem or None, a note for the form) about the hub ids the experiment names: each must be in
    the local Hugging Face cache, or (when not offline) on the hub. `reach`: ask the hub about ids not
    in the cache (a network call: before a launch, not at every key)."""
    from engine.config import is_hub_id

    model = raw.get("model") or {}
    notes = []
    for key, probe_file in _HUB_KEYS:
        name = get_key(raw, key)
        if not isinstance(name, str) or not name or (key == "model.path" and model.get("init") == "scratch"):
            continue
        if Path(name).expanduser().exists():
            notes.append(f"{key.split('.')[1]}: local folder")
            continue
        if not is_hub_id(name):
            continue  # `check` reports it
        if _in_hub_cache(name, probe_file):
            notes.append(f"{key.split('.')[1]}: hub id, in the local cache")
        elif _hub_offline():
            return (f"{key}: '{name}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set; download it "
                    f"first (huggingface-cli download {name}) or give a local folder", "")
        elif reach:
            problem = hub_problem(name)
            if problem:
                return f"{key}: '{name}' {problem}", ""
            notes.append(f"{key.split('.')[1]}: hub id, reachable (downloaded at the first stage)")
        else:
            notes.append(f"{key.split('.')[1]}: hub id, not downloaded yet (checked on the hub when you launch)")
    return None, "; ".join(notes)


def _in_hub_cache(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:  # noqa: BLE001 - an unreadable cache is a cache without it
        return False


def _hub_offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def hub_problem(repo_id: str) -> str | None:
    """Why the hub will not serve `repo_id` (None when it will): asks huggingface.co (a few seconds)."""
    from huggingface_hub import auth_check
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        auth_check(repo_id)
    except GatedRepoError:
        return "is gated: accept its licence on huggingface.co, then `huggingface-cli login`"
    except RepositoryNotFoundError:
        return "is not on the Hugging Face hub (or is private: `huggingface-cli login`); check the id"
    except Exception as e:  # noqa: BLE001 - no network, a proxy, a timeout: all say the same to the user
        return f"cannot be reached on the Hugging Face hub ({type(e).__name__}); check the network or give a local folder"
    return None


def experiment_path(name: str, experiments_dir: str | Path = "experiments") -> Path:
    return Path(experiments_dir) / f"{name or 'experiment'}.toml"
