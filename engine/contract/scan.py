"""Snapshots of every run under a runs directory: the one summary of a run that the TUI, `status`
and `compare` read.

A scan stats files and re-reads only what changed: status.json when its inode/mtime/size moves,
metrics.jsonl from the byte offset reached last time (engine.contract.metrics_summary). Runs in a
terminal state are re-checked less often. Pure Python, torch-free and pydantic-free (the TUI imports
it at start-up and calls it from a thread worker).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.contract.cancelling import cancel_note
from engine.contract.files import UnreadableFile, parse_iso, read_json
from engine.contract.layout import RunLayout
from engine.contract.metrics_summary import FileKey, MetricsSummary, stat_key
from engine.contract.outputs import missing_output
from engine.contract.status import effective_state, stall_note
from engine.stages import planned_stages, run_order

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class StageInfo:
    name: str
    state: str = "pending"
    step: int = 0
    total_steps: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    gpus: tuple[int, ...] = ()
    pid: int | None = None
    pgid: int | None = None
    started_at: str | None = None
    updated_at: str | None = None
    ended_at: str | None = None
    error: str | None = None
    warning: str | None = None  # the orchestrator's stages.<stage>.warning (divergence) in <run>/status.json
    note: str | None = None  # "cancelling: saving checkpoint at step N", or a stage without heartbeat

    @property
    def cancelling(self) -> bool:
        """The stage got a stop request and is finishing its step or saving its checkpoint."""
        return bool(self.note and self.note.startswith("cancelling"))

    @property
    def fraction(self) -> float | None:
        if self.state == "succeeded":
            return 1.0
        if not self.total_steps:
            return None
        return max(0.0, min(1.0, self.step / self.total_steps))


@dataclass(frozen=True)
class RunInfo:
    name: str
    path: Path
    state: str
    stages: tuple[StageInfo, ...]
    created: float  # epoch seconds (experiment.toml mtime)
    error: str | None = None
    # from the orchestrator's status.json
    pipeline_pid: int | None = None
    host: str | None = None
    pipeline_stage: str | None = None  # the stage it ran last
    started_at: str | None = None
    updated_at: str | None = None

    @property
    def current(self) -> StageInfo | None:
        """The stage to summarise: the running one, else the failed one, else the last started."""
        for want in ("running", "failed", "cancelled"):
            for s in self.stages:
                if s.state == want:
                    return s
        started = [s for s in self.stages if s.state != "pending"]
        return started[-1] if started else (self.stages[0] if self.stages else None)

    @property
    def gpus(self) -> tuple[int, ...]:
        return tuple(sorted({g for s in self.stages if s.state == "running" for g in s.gpus}))

    def stage(self, name: str) -> StageInfo | None:
        return next((s for s in self.stages if s.name == name), None)

    @property
    def warnings(self) -> list[tuple[str, str]]:
        """(stage, warning) of every stage the orchestrator warned about (a diverged validation loss)."""
        return [(s.name, s.warning) for s in self.stages if s.warning]

    @property
    def note(self) -> str | None:
        """A cancel in progress or a stage without heartbeat, as the first such stage says it ("stage: ...")."""
        return next((f"{s.name}: {s.note}" for s in self.stages if s.note), None)

    @property
    def cancelling(self) -> bool:
        return any(s.cancelling for s in self.stages)


def _read_shown(path: str | Path, stage: str | None = None) -> dict[str, Any] | None:
    """read_json for the run list, which must go on: a stage whose status.json cannot be read shows as
    failed, with the reason (the engine's own readers stop on it instead)."""
    try:
        doc = read_json(path)
    except UnreadableFile as e:
        return {"stage": stage, "state": "failed", "error": {"type": "UnreadableFile", "message": str(e)}} \
            if stage else None
    if doc is None and stage and os.path.exists(path):  # damaged: a finished run showed it as "pending"
        return {"stage": stage, "state": "failed",
                "error": {"type": "DamagedStatus", "message": f"{path} is not a JSON object (damaged?); `run` "
                          "redoes the stage"}}
    return doc


def format_error(err: Any) -> str | None:
    if not err:
        return None
    if isinstance(err, dict):
        kind, msg = err.get("type"), err.get("message")
        if kind and msg and str(msg).lower().startswith(str(kind).lower()):
            return str(msg)  # "Cancelled: cancelled by SIGTERM ..." says it twice
        return f"{kind}: {msg}" if kind and msg else str(msg or kind)
    return str(err)


def _effective(doc: dict[str, Any] | None) -> tuple[str, str | None]:
    """(state, error) as engine.contract.read_status would report them, from a cached document."""
    if not doc:
        return "pending", None
    state = effective_state(doc)
    err = format_error(doc.get("error"))
    if state == "failed" and doc.get("state") == "running" and not err:
        err = "ProcessDied: the process ended without reporting (killed?)"
    return state, err


def _created_key(path: Path) -> float:
    for name in (RunLayout.EXPERIMENT, RunLayout.STATUS):
        try:
            return os.stat(path / name).st_mtime
        except OSError:
            continue
    return 0.0


@dataclass
class _StageCache:
    metrics: MetricsSummary
    status_key: FileKey | None = None
    status: dict[str, Any] | None = None


@dataclass
class _RunCache:
    exp_key: FileKey | None = None
    planned: list[str] = field(default_factory=list)
    created: float = 0.0
    pipe_key: FileKey | None = None
    pipe_key_plan: FileKey | None = None  # pipe_key when `planned` was computed
    pipe: dict[str, Any] | None = None
    stages: dict[str, _StageCache] = field(default_factory=dict)
    dir_key: FileKey | None = None
    on_disk: list[str] = field(default_factory=list)
    info: RunInfo | None = None
    checked: float = 0.0


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def stage_info(name: str, doc: dict[str, Any] | None, m: MetricsSummary, now: float,
               warning: str | None = None) -> StageInfo:
    """One stage's summary from its status.json document and its metrics; `now` (epoch seconds) for the ETA;
    `warning`: what the orchestrator recorded about it (stages.<name>.warning of the run's status.json)."""
    state, err = _effective(doc)
    doc = doc or {}
    tr, va = m.last_train or {}, m.last_val or {}
    step = doc.get("step") if isinstance(doc.get("step"), int) else 0
    if isinstance(tr.get("step"), int) and tr["step"] > step:
        step = tr["step"]
    total = doc.get("total_steps") if isinstance(doc.get("total_steps"), int) else None
    eta = None
    if state == "running" and total and step < total:
        rate = m.rate()
        if rate is None:
            started = parse_iso(doc.get("started_at"))
            if started is not None and step > 0:
                elapsed = now - started.timestamp()
                rate = step / elapsed if elapsed > 0 else None
        eta = (total - step) / rate if rate else None
    return StageInfo(
        name=name, state=state, step=step, total_steps=total,
        train_loss=_num(tr.get("loss")), val_loss=_num(va.get("loss")),
        tokens=m.tokens, tokens_per_s=_num(tr.get("tokens_per_s")), eta_s=eta,
        gpus=tuple(g for g in doc.get("gpus") or () if isinstance(g, int)),
        pid=doc.get("pid"), pgid=doc.get("pgid"), started_at=doc.get("started_at"),
        updated_at=doc.get("updated_at"), ended_at=doc.get("ended_at"), error=err,
        warning=warning if isinstance(warning, str) and warning else None,
        note=(cancel_note(doc) or stall_note(doc, now)) if state == "running" else None,
    )


def run_state(stages: tuple[StageInfo, ...], pipe: dict[str, Any] | None) -> tuple[str, str | None]:
    """One state for the whole run, from its stages and the orchestrator's status.json."""
    states = [s.state for s in stages]
    pstate, perr = _effective(pipe)
    if "running" in states or pstate == "running":
        return "running", None
    failed = next((s for s in stages if s.state == "failed"), None)
    if failed is not None:
        return "failed", f"{failed.name}: {failed.error}" if failed.error else failed.name
    if pstate in ("failed", "cancelled"):
        return pstate, perr
    if "cancelled" in states:
        return "cancelled", None
    if stages and all(s == "succeeded" for s in states):
        return "succeeded", None
    return "pending", None


class RunScanner:
    """Keeps per-file cursors between scans; `scan()` returns a fresh snapshot of every run.
    `history`: read metrics files whole and keep their validation records (MetricsSummary)."""

    def __init__(self, runs_dir: str | Path, idle_recheck_s: float = 5.0, clock: Callable[[], float] = time.time,
                 history: bool = False):
        self.runs_dir = Path(runs_dir)
        self.idle_recheck_s = idle_recheck_s
        self.clock = clock  # wall-clock time, for elapsed times and ETAs (tests pass a stopped one)
        self.history = history
        self._cache: dict[Path, _RunCache] = {}

    def scan(self, newest: int | None = None) -> list[RunInfo]:
        """Every run, newest first. `newest=N`: only the N most recent runs (by their
        experiment.toml's mtime, a stat each), so a first screenful shows before the rest
        is read; a later full scan completes it."""
        now = self.clock()
        try:
            entries = [Path(e.path) for e in os.scandir(self.runs_dir) if e.is_dir()]
        except OSError:
            entries = []
        if newest is not None and len(entries) > newest:
            entries = sorted(entries, key=_created_key, reverse=True)[:newest]
        seen: dict[Path, RunInfo] = {}
        for path in entries:
            info = self._scan_run(path, now)
            if info is not None:
                seen[path] = info
        if newest is None:
            for gone in set(self._cache) - set(seen):
                del self._cache[gone]
        return sorted(seen.values(), key=lambda r: (-r.created, r.name))

    def scan_run(self, path: str | Path) -> RunInfo | None:
        """One run's snapshot (None when `path` is not a run directory)."""
        return self._scan_run(Path(path), self.clock())

    def stage_metrics(self, path: str | Path, stage: str) -> MetricsSummary | None:
        """The metrics summary behind a stage of the last snapshot of the run at `path`."""
        rc = self._cache.get(Path(path))
        sc = rc.stages.get(stage) if rc else None
        return sc.metrics if sc else None

    def _scan_run(self, path: Path, now: float) -> RunInfo | None:
        rc = self._cache.get(path)
        layout = RunLayout(path)
        exp_file, pipe_file = layout.experiment_file, layout.status_file
        dir_key = stat_key(path)
        if rc is not None and rc.info is not None and rc.info.state in TERMINAL + ("pending",) \
                and dir_key == rc.dir_key and time.monotonic() - rc.checked < self.idle_recheck_s:
            return rc.info  # finished and untouched: re-stat its files only now and then
        exp_key, pipe_key = stat_key(exp_file), stat_key(pipe_file)
        if exp_key is None and pipe_key is None:
            return None  # not a run directory (yet)
        if rc is None:
            rc = self._cache[path] = _RunCache()
        rc.checked = time.monotonic()  # an interval, not the (injectable) wall clock: a stopped one never rechecks
        if pipe_key != rc.pipe_key:
            rc.pipe_key, rc.pipe = pipe_key, _read_shown(pipe_file)
        if exp_key != rc.exp_key or pipe_key != rc.pipe_key_plan:
            rc.exp_key, rc.pipe_key_plan = exp_key, pipe_key
            rc.created = exp_key[1] / 1e9 if exp_key else (pipe_key[1] / 1e9 if pipe_key else now)
            # the orchestrator's status.json lists the plan (JSON: cheaper than the TOML)
            pipe_stages = (rc.pipe or {}).get("stages")
            rc.planned = list(pipe_stages) if isinstance(pipe_stages, dict) and pipe_stages \
                else self._read_plan(exp_file)
        if dir_key != rc.dir_key:
            rc.dir_key = dir_key
            rc.on_disk = self._stage_dirs(path)
        names = run_order(rc.planned, rc.on_disk)
        stages = []
        root = str(path)
        pipe_docs = (rc.pipe or {}).get("stages")
        pipe_docs = pipe_docs if isinstance(pipe_docs, dict) else {}
        for name in names:
            sc = rc.stages.get(name)
            if sc is None:
                sc = rc.stages[name] = _StageCache(MetricsSummary(history=self.history))
            status_file = os.path.join(root, name, RunLayout.STATUS)
            key = stat_key(status_file)
            if key != sc.status_key:
                sc.status_key, sc.status = key, _read_shown(status_file, name)
            mfile = os.path.join(root, name, RunLayout.METRICS)
            sc.metrics.update(mfile)
            pdoc = pipe_docs.get(name)
            info = stage_info(name, sc.status, sc.metrics, now, pdoc.get("warning") if isinstance(pdoc, dict) else None)
            if info.state == "succeeded" and (gone := missing_output(layout, name)):  # deleted since
                info = replace(info, note=f"succeeded, but {gone} (deleted?); `run` redoes the stage")
            stages.append(info)
        stages_t = tuple(stages)
        state, err = run_state(stages_t, rc.pipe)
        pipe = rc.pipe or {}
        pid = pipe.get("pid")
        info = RunInfo(name=path.name, path=path, state=state, stages=stages_t, created=rc.created,
                       error=err, pipeline_pid=pid if isinstance(pid, int) else None, host=pipe.get("host"),
                       pipeline_stage=pipe.get("stage"), started_at=pipe.get("started_at"),
                       updated_at=pipe.get("updated_at"))
        rc.info = info if info != rc.info else rc.info
        return rc.info

    @staticmethod
    def _read_plan(exp_file: Path) -> list[str]:
        try:
            return planned_stages(tomllib.loads(exp_file.read_text(encoding="utf-8")))
        except (OSError, ValueError, UnicodeDecodeError):
            return []

    @staticmethod
    def _stage_dirs(path: Path) -> list[str]:
        try:
            return [e.name for e in os.scandir(path) if e.is_dir() and os.path.exists(os.path.join(e.path, RunLayout.STATUS))]
        except OSError:
            return []
