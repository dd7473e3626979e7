"""The whole run's progress and ETA (the tables' Progress and ETA columns are the current stage's)."""

from __future__ import annotations

from app.data import fmt
from engine.contract import RunInfo, parse_iso


def run_progress(run: RunInfo, now: float) -> tuple[float, float | None]:
    """(fraction of the run's stages done, seconds left or None): each stage counts as one, a running
    stage by its own fraction. The time left is the running stages' own ETA (the longest: students
    distilled at once) plus, for each stage not started yet, the time a stage has taken so far on
    average; without a running stage's ETA, the time so far extrapolated. (Extrapolating alone said
    "~4m33s" while the running stage said 50 min: the first stages are short.)"""
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
    own = [s.eta_s for s in stages if s.state == "running" and s.eta_s is not None]
    if not own:
        return done, per_stage * (1 - done) * len(stages)
    return done, max(own) + per_stage * sum(s.state == "pending" for s in stages)


def run_progress_text(run: RunInfo, now: float) -> str:
    """e.g. "run 2/7 stages, 21%, ETA ~5m" (no ETA once the run has stopped)."""
    done, eta = run_progress(run, now)
    finished = sum(s.state == "succeeded" for s in run.stages)
    text = f"run {finished}/{len(run.stages)} stages, {done * 100:.0f}%"
    return text + (f", ETA ~{fmt.duration(eta)}" if eta is not None else "")
