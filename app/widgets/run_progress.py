"""The whole run's progress and ETA (the tables' Progress and ETA columns are the current stage's)."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path

from app.data import fmt
from engine.contract import (
    RunInfo,
    RunLayout,
    StageInfo,
    kind_of,
    kind_or_none,
    parse_iso,
    stage_kind,
    student_or_none,
)


def _duration(s: StageInfo) -> float | None:
    start, end = parse_iso(s.started_at), parse_iso(s.ended_at)
    return max(0.0, end.timestamp() - start.timestamp()) if start is not None and end is not None else None


def _step_time(stages: tuple[StageInfo, ...], kind: str, now: float) -> float | None:
    """Seconds a step of `kind` takes: its finished stages' time over their steps (start-up included),
    else a running one's own ETA over its steps left, else its time so far over its steps done."""
    same = [s for s in stages if stage_kind(s.name) == kind]
    finished = [(d, s.total_steps or s.step) for s in same if s.state == "succeeded"
                and (d := _duration(s)) is not None and (s.total_steps or s.step)]
    if finished:
        return sum(d for d, _ in finished) / sum(n for _, n in finished)
    for s in same:
        if s.state != "running":
            continue
        if s.eta_s is not None and s.total_steps and s.total_steps > s.step:
            return s.eta_s / (s.total_steps - s.step)
        start = parse_iso(s.started_at)
        if s.step > 0 and start is not None and now > start.timestamp():
            return (now - start.timestamp()) / s.step
    return None


def _mean_time(stages: tuple[StageInfo, ...], kind: str) -> float | None:
    """The mean time the finished stages of `kind` took, else the finished stages that do not train."""
    def mean(pick) -> float | None:
        ds = [d for s in stages if s.state == "succeeded" and pick(s) and (d := _duration(s)) is not None]
        return sum(ds) / len(ds) if ds else None

    def trains(s: StageInfo) -> bool:
        k = kind_or_none(s.name)
        return k is not None and k.training

    own = mean(lambda s: stage_kind(s.name) == kind)
    return own if own is not None else mean(lambda s: not trains(s))


def _pending_time(run: RunInfo, stage: StageInfo, steps: Mapping[str, int], now: float) -> float | None:
    """A stage not started yet: a training stage's steps at its kind's step time, another at the mean
    time the finished ones took; None when nothing is known."""
    kind = kind_or_none(stage.name)
    n = stage.total_steps or steps.get(stage.name)
    if kind is not None and kind.training:
        rate = _step_time(run.stages, kind.name, now)
        return rate * n if rate is not None and n else None
    return _mean_time(run.stages, stage_kind(stage.name))


def run_progress(run: RunInfo, now: float, steps: Mapping[str, int] | None = None) -> tuple[float, float | None]:
    """(fraction of the run's stages done, seconds left or None): each stage counts as one, a running
    stage by its own fraction. The time left is the running stages' own ETA (the longest: students
    distilled at once) plus, for each stage not started yet, its own estimate: a training stage's steps
    (`steps`: stage -> the experiment's steps, see planned_steps) at the step time of a running or
    finished stage of its kind, another stage the mean time the finished ones took. Where nothing is
    known, the time a stage has taken so far on average (and without a running stage's ETA, the time
    so far extrapolated). (Extrapolating alone said "~4m33s" while the running stage said 50 min: the
    first stages are short; and a 500-step distillation waiting behind a running one counted as one of
    those short stages.)"""
    stages = run.stages
    if not stages:
        return 0.0, None
    done = sum(1.0 if s.state == "succeeded" else (s.fraction or 0.0) if s.state == "running" else 0.0
               for s in stages) / len(stages)
    if run.state != "running" or done <= 0 or done >= 1:
        return done, None
    starts = [t.timestamp() for t in (parse_iso(s.started_at) for s in stages) if t is not None]
    if not starts or now <= min(starts):
        return done, None
    per_stage = (now - min(starts)) / (done * len(stages))
    running = [s for s in stages if s.state == "running"]
    own = [s.eta_s for s in running if s.eta_s is not None]
    left = max(own) if own else per_stage * sum(1 - (s.fraction or 0.0) for s in running)
    estimates = [_pending_time(run, s, steps or {}, now) for s in stages if s.state == "pending"]
    return done, left + math.fsum(per_stage if e is None else e for e in estimates)


@functools.lru_cache(maxsize=64)
def _steps_of(path: str, _mtime_ns: int, _size: int) -> dict[str, int]:
    from engine.config import ConfigError, load_experiment

    try:
        exp = load_experiment(path)
    except (ConfigError, ValueError, TypeError, OSError):
        return {}  # a file of an older schema: the stages' own counts and the average stage
    out: dict[str, int] = {}
    for stage in exp.stages():
        kind, student = kind_of(stage), student_or_none(stage)
        if not kind.training or kind.section is None:
            continue
        settings = (kind.student_settings(exp, student) if kind.student_settings and student  # its overrides
                    else getattr(exp, kind.section, None))
        if settings is not None:
            out[stage] = settings.steps
    return out


def planned_steps(run_dir: Path) -> dict[str, int]:
    """{training stage: its steps} as the run's experiment.toml sets them ([finetune] steps; [distill]
    steps with each [[prune]] student's own `distill = {steps = ...}`); {} where it cannot be read.
    Parsed again only when the file changes."""
    path = RunLayout(run_dir).experiment_file
    try:
        st = path.stat()
    except OSError:
        return {}
    return dict(_steps_of(str(path), st.st_mtime_ns, st.st_size))


def run_progress_text(run: RunInfo, now: float) -> str:
    """e.g. "run 2/7 stages, 21%, ETA ~5m" (no ETA once the run has stopped)."""
    done, eta = run_progress(run, now, planned_steps(run.path) if run.state == "running" else None)
    finished = sum(s.state == "succeeded" for s in run.stages)
    text = f"run {finished}/{len(run.stages)} stages, {done * 100:.0f}%"
    return text + (f", ETA ~{fmt.duration(eta)}" if eta is not None else "")
