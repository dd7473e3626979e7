"""Downstream tasks through lm-evaluation-harness: `lm_eval.simple_evaluate` on the model in memory.

No harness of our own: the model goes to lm-eval's Hugging Face wrapper (HFLM) as it is (its device
and dtype), with the run's tokenizer. Every metric of every task (groups and their subtasks too)
is recorded with its stderr, flattened to `{"acc": 0.41, "acc_stderr": 0.005, ...}`; a metric of
a filter other than lm-eval's "none" is named `<metric>_<filter>` (e.g. `exact_match_strict-match`).
A multiple-choice task also gets `"chance"`: the score of a blind guess (the mean of 1/choices over the
documents evaluated), so a score can be told apart from guessing (engine.contract.scores.at_chance).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from torch import nn

from engine.contract.scores import CHANCE
from engine.errors import UserError
from engine.evaluation.task_specs import TaskEntry, local_task_config

Metrics = dict[str, dict[str, float | None]]


def task_inputs(entries: list[TaskEntry]) -> list[str | dict[str, Any]]:
    """What simple_evaluate takes: names as they are, each local task YAML as a config dict."""
    out: list[str | dict[str, Any]] = []
    for e in entries:
        if not e.files:
            out.append(e.entry)
            continue
        configs = [local_task_config(f) for f in e.files]
        out += [c for c in configs if isinstance(c.get("task"), str)]  # the rest are `include:` bases
    return out


def reported_names(entry: TaskEntry) -> list[str]:
    """The task names lm-eval reports an entry's results under: the name as written, or each local
    YAML's `task` (a path is never a result key)."""
    return [t if isinstance(t, str) else t["task"] for t in task_inputs([entry])]


@lru_cache(maxsize=2)
def task_manager(with_builtin_tasks: bool) -> Any:
    """lm-eval's task index, built once per process (indexing its thousands of built-in task YAMLs
    takes seconds); local tasks alone need none of them."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=with_builtin_tasks)


@contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars (they would flood the stage's stdout.log) and only lm-eval's errors
    (it warns once per truncated request) while lm-eval runs."""
    from tqdm import std

    init = std.tqdm.__init__
    loggers = [logging.getLogger(n) for n in ("lm-eval", "lm_eval")]
    levels = [lg.level for lg in loggers]

    def silent_init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True  # lm-eval passes disable=False itself
        init(self, *args, **kwargs)

    std.tqdm.__init__ = silent_init  # type: ignore[method-assign]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        std.tqdm.__init__ = init  # type: ignore[method-assign]
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class _Recording:
    """lm-eval's TaskManager that keeps what simple_evaluate loads through it (simple_evaluate returns
    scores only, and the number of choices of each document is in the task objects)."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.loaded: dict[str, Any] = {}

    def load(self, *args: Any, **kwargs: Any) -> Any:
        self.loaded = self._inner.load(*args, **kwargs)
        return self.loaded

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def chance_level(task: Any) -> float | None:
    """A blind guess's expected accuracy on the documents a multiple-choice task evaluated (the mean
    of 1/number of choices; also acc_norm's, its choice being as blind); None for other tasks."""
    if task.get_config("output_type") != "multiple_choice":
        return None
    docs = {inst.doc_id: inst.doc for inst in task.instances or []}
    counts = [len(task.doc_to_choice(doc)) for doc in docs.values()]
    return sum(1 / n for n in counts) / len(counts) if counts and all(counts) else None


def chance_levels(loaded: Any) -> dict[str, float]:
    """{task or group: chance} of the multiple-choice tasks lm-eval loaded; a group gets its members'
    chance when they all share one (e.g. mmlu's 0.25), since a group's score mixes theirs."""
    if not isinstance(loaded, dict):
        return {}
    out = {name: c for name, task in loaded.get("tasks", {}).items() if (c := chance_level(task)) is not None}
    groups: dict[str, list[str]] = loaded.get("group_map") or {}

    def of(name: str, seen: frozenset[str]) -> float | None:
        if name in out or name not in groups or name in seen:
            return out.get(name)
        levels = {of(m, seen | {name}) for m in groups[name]}  # members may be groups (mmlu -> mmlu_stem)
        if len(levels) == 1 and None not in levels:
            out[name] = levels.pop()  # type: ignore[assignment]
        return out.get(name)

    for group in groups:
        of(group, frozenset())
    return out


# Resamples for the stderr of metrics without a closed form (perplexity, F1, ...): lm-eval's default
# is 100,000 (2.9 s per metric in one process on a small CPU); 10,000 gives the same stderr to ~1%.
BOOTSTRAP_ITERS = 10_000


@contextmanager
def _bootstrap_in_process() -> Iterator[None]:
    """lm-eval bootstraps in a multiprocessing pool, forked from this process, whose torch threads
    may hold a lock at the fork: the child then waits on it forever (an eval stage hung so on the CPU,
    in "bootstrapping for stddev: perplexity"). Its DISABLE_MULTIPROC switch keeps it in process."""
    saved = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = saved


def flatten_metrics(raw: dict[str, Any]) -> dict[str, float | None]:
    """lm-eval's {"acc,none": x, "acc_stderr,none": s, "alias": ...} -> {"acc": x, "acc_stderr": s}."""
    out: dict[str, float | None] = {}
    for key, value in raw.items():
        if "," not in key:
            continue  # "alias", "name", "sample_len", ...
        name, filt = key.split(",", 1)
        stderr = name.endswith("_stderr")
        base = name[: -len("_stderr")] if stderr else name
        label = base if filt == "none" else f"{base}_{filt}"
        num = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        out[label + ("_stderr" if stderr else "")] = num if num is None or math.isfinite(num) else None
    return out


def metrics_line(task: str, metrics: dict[str, float | None]) -> str:
    """"stdlib_continue (chance 0.25): acc 0.3000, acc_mutual_info 0.2620": one task's metrics for the
    eval log; its chance level is said once beside its name, since it is no metric of the model."""
    level = metrics.get(CHANCE)
    name = f"{task} (chance {level:.3g})" if isinstance(level, (int, float)) else task
    values = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                       if v is not None and not k.endswith("_stderr") and k != CHANCE)
    return f"{name}: {values or '-'}"


def run_tasks(model: nn.Module, tokenizer: Any, entries: list[TaskEntry], num_fewshot: int,
              limit: int | None, batch_size: int, seed: int = 1234) -> tuple[Metrics, Metrics]:
    """({task: {metric: value, metric_stderr: value}} of the tasks and groups asked for, the same of
    the members of those groups): every task and group lm-eval reports."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    manager = _Recording(task_manager(any(not e.files for e in entries)))
    was_training = model.training
    model.eval()
    try:
        with _quiet(), _bootstrap_in_process():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                      max_length=getattr(model.config, "max_position_embeddings", None))
            out = lm_eval.simple_evaluate(
                model=lm, tasks=task_inputs(entries), num_fewshot=num_fewshot, limit=limit,
                task_manager=manager, log_samples=False,
                random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                bootstrap_iters=BOOTSTRAP_ITERS)
    except (FileNotFoundError, KeyError, ValueError, ConnectionError, OSError) as e:
        raise UserError(f"eval.tasks: lm-eval could not run {[e.entry for e in entries]}: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    finally:
        model.train(was_training)
    out = out or {}
    results = out.get("results", {})
    members = {t for subs in (out.get("group_subtasks") or {}).values() for t in subs}
    flat = {task: flatten_metrics(metrics) for task, metrics in results.items()}
    for task, level in chance_levels(manager.loaded).items():
        if task in flat:
            flat[task][CHANCE] = level
    return ({t: m for t, m in flat.items() if t not in members},
            {t: m for t, m in flat.items() if t in members})
