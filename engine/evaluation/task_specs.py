"""`[eval] tasks` entries -> what lm-eval loads, checked before anything runs (no torch here).

An entry is an lm-eval task name ("hellaswag", "arc_easy", "mmlu") or a path to a task YAML file
or a folder of them (local tasks). Paths are found relative to the working directory, the
experiment file's folder, or the slimlab checkout (so `experiments/tasks/...` works from anywhere).
Relative `dataset_kwargs.data_files` in a local YAML are taken relative to that YAML, so a local
task runs offline from any working directory.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

INSTALL_HINT = 'pip install "slimlab[eval]"'
_CHECKOUT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TaskEntry:
    entry: str  # as written in [eval] tasks
    files: tuple[Path, ...]  # the YAML files of a local task; () for an lm-eval task name


def is_path_like(entry: str) -> bool:
    return entry.endswith((".yaml", ".yml")) or "/" in entry or entry.startswith(".")


def require_lm_eval(where: str) -> None:
    """A ConfigError with the install command unless lm-eval is importable."""
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(f"{where}: eval.tasks needs lm-evaluation-harness, which is not installed; "
                          f"run: {INSTALL_HINT}")


def resolve_entry(entry: str, experiment_file: str | None) -> TaskEntry:
    if not is_path_like(entry):
        return TaskEntry(entry, ())
    p = Path(entry).expanduser()
    bases = [Path.cwd()] + ([Path(experiment_file).resolve().parent] if experiment_file else []) + [_CHECKOUT]
    for c in [p] if p.is_absolute() else [b / p for b in bases]:
        if c.is_file():
            return TaskEntry(entry, (c.resolve(),))
        if c.is_dir():
            files = tuple(sorted(f.resolve() for f in c.rglob("*.y*ml") if f.suffix in (".yaml", ".yml")))
            if files:
                return TaskEntry(entry, files)
            raise ConfigError(f"eval.tasks: folder '{entry}' holds no task YAML file (*.yaml)")
    raise ConfigError(f"eval.tasks: no task file or folder '{entry}' (looked in "
                      f"{', '.join(str(b) for b in bases)}); give an lm-eval task name or a YAML path")


def check_tasks(exp: Any) -> list[TaskEntry]:
    """The [eval] tasks of `exp`, resolved; ConfigError (one line) when lm-eval is missing or a
    local task path does not exist. Called by `check` and `run` before anything is written."""
    if exp.eval is None or not exp.eval.tasks:
        return []
    where = exp.source or "experiment"
    require_lm_eval(where)
    try:
        entries = [resolve_entry(t, exp.source) for t in exp.eval.tasks]
        for e in entries:
            for f in e.files:
                _check_task_yaml(f)
        _check_task_names([e.entry for e in entries if not e.files])
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return entries


def _check_task_yaml(path: Path) -> None:
    """A local task YAML lm-eval can read (a junk file failed in the eval stage, after the whole pipeline).
    Read without resolving `!function` (that imports the task's own code, which the eval stage does)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        cfg = load_yaml(path, resolve_func=False, recursive=True)
    except Exception as e:  # noqa: BLE001  (yaml's errors, a missing include: all the user's to fix)
        raise ConfigError(f"eval.tasks: {path} is not a task YAML lm-eval can read ({str(e).splitlines()[0]}); "
                          "fix it") from None
    if not isinstance(cfg, dict) or not ({"task", "group", "include"} & set(cfg)):
        raise ConfigError(f"eval.tasks: {path} is not a task YAML (no `task:` key); see lm-eval's task guide")


@cache
def _known_tasks() -> frozenset[str]:
    """Every task, group and tag name lm-eval knows (indexing them takes seconds: once per process)."""
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager().all_tasks)


def _check_task_names(names: list[str]) -> None:
    """Each named task resolves in lm-eval (an unknown one was found after the whole pipeline ran)."""
    if not names:
        return
    known = _known_tasks()
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
            hint = f"did you mean '{close[0]}'?" if close else "`lm-eval ls tasks` lists them"
            raise ConfigError(f"eval.tasks: '{name}' is not an lm-eval task; {hint}")


def local_task_config(path: Path) -> dict[str, Any]:
    """One local task YAML as the config dict lm-eval takes, its relative data files made absolute.

    Loaded with lm-eval's own YAML loader (so `!function` and `include:` work as in lm-eval)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = dict(load_yaml(path, resolve_func=True, recursive=True))
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    files = kwargs.get("data_files")
    if files is not None:
        def absolute(f: Any) -> Any:
            if isinstance(f, str) and not Path(f).is_absolute() and "://" not in f:
                return str((path.parent / f).resolve())
            return f
        if isinstance(files, dict):
            files = {k: [absolute(x) for x in v] if isinstance(v, list) else absolute(v) for k, v in files.items()}
        elif isinstance(files, list):
            files = [absolute(x) for x in files]
        else:
            files = absolute(files)
        kwargs["data_files"] = files
        cfg["dataset_kwargs"] = kwargs
    return cfg
