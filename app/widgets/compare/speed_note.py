"""What Compare says about its speed figures: how many rounds each is the median of and how far
its repeats spread, that a figure was taken on a loaded CPU, and a warning when the ticked runs were
timed under different loads (or on different devices). Within one run the models are timed round
robin, so a burst of load hits them alike; across runs nothing makes their speeds comparable."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.contract import RunLayout, read_results

LOAD_GAP = 0.5  # 1-min load per CPU: runs further apart than this were timed under different loads


@dataclass(frozen=True)
class RunSpeed:
    """One run's speed measurement (eval/results.json's `speed` entries, shared by its models)."""

    run: str
    repeats: int | None = None  # rounds timed
    load: float | None = None  # the highest 1-minute load average during the measurement
    cpus: int | None = None
    under_load: bool = False  # load above the CPU count: the figures are noise
    device: str | None = None
    spreads: tuple[float, ...] = ()  # each model's decode spread at the smallest batch

    @property
    def per_cpu(self) -> float | None:
        return self.load / self.cpus if self.load is not None and self.cpus else None


def run_speed(run_dir: Path) -> RunSpeed | None:
    """The run's measurement (its models were timed together: one load, one round count); None
    without a speed entry."""
    speeds = [sp for res in read_results(RunLayout(run_dir).results_file).values()
              if isinstance(sp := res.raw.get("speed"), dict) and sp.get("decode_tokens_per_s")]
    return speed_of(run_dir.name, speeds) if speeds else None


def speed_of(run: str, speeds: list[dict[str, Any]]) -> RunSpeed:
    """A run's measurement from its models' `speed` entries."""
    first = speeds[0]
    load = first.get("load") if isinstance(first.get("load"), dict) else {}
    spreads = []
    for sp in speeds:
        decode = sp.get("spread", {}).get("decode") if isinstance(sp.get("spread"), dict) else None
        if isinstance(decode, dict) and decode:
            v = decode[min(decode, key=_batch)]
            spreads += [float(v)] if _num(v) is not None else []
    return RunSpeed(run, _int(first.get("repeats")), _num(load.get("max_1min")), _int(load.get("cpus")),
                    any(sp.get("under_load") is True for sp in speeds),
                    first.get("device") if isinstance(first.get("device"), str) else None, tuple(spreads))


def load_warning(speeds: Iterable[RunSpeed]) -> str:
    """"⚠ ..." when the runs' speeds were taken under different conditions; "" when they compare
    (or there is one run)."""
    speeds = list(speeds)
    if len(speeds) < 2:
        return ""
    devices = {s.device for s in speeds if s.device}
    if len(devices) > 1:
        return "⚠ runs timed on different devices (" + ", ".join(f"{s.run} {s.device}" for s in speeds) \
            + "): their speeds do not compare"
    loads = [s.per_cpu for s in speeds if s.per_cpu is not None]
    if len({s.under_load for s in speeds}) > 1 or (loads and max(loads) - min(loads) > LOAD_GAP):
        return "⚠ runs timed under different loads (" + ", ".join(
            f"{s.run} {s.per_cpu:.1f}" for s in speeds if s.per_cpu is not None) \
            + " per CPU): their speeds do not compare"
    return ""


def measured(s: RunSpeed) -> str:
    """"median of 12 rounds ±3-9%": what each speed figure of the run is."""
    out = f"median of {s.repeats} rounds" if s.repeats else "median"
    return out + spread_text(s.spreads)


def axis_note(run_dirs: Iterable[Path], loaded: bool) -> str:
    """The clauses the quality-vs-speed x label ends with (the chart draws them above the plot): how
    each run's figures were measured, "* timed under load" when a point is, and the runs' load
    warning."""
    speeds = [s for s in map(run_speed, run_dirs) if s is not None]
    how = ", ".join((f"{s.run}: " if len(speeds) > 1 else "") + measured(s) for s in speeds)
    warning = load_warning(speeds)
    return "".join(f"; {c}" for c in (how, "* timed under load: noise" if loaded else "", warning) if c)


def spread_text(spreads: Iterable[float]) -> str:
    """" ±3-9%": the range of the figures' spreads ((Q3 - Q1) / median of their repeats)."""
    spreads = list(spreads)
    if not spreads:
        return ""
    lo, hi = round(100 * min(spreads)), round(100 * max(spreads))
    return f" ±{lo}%" if lo == hi else f" ±{lo}-{hi}%"


def spread_note(rows: Iterable[Any]) -> str:
    """", median of 12 rounds ±3-9%; *: loaded CPU" for the decode speeds of `rows`
    (engine.contract.ModelRow: repeats, decode_spread at the smallest batch, under_load): what the
    table's tok/s figures are worth, as `measured` says it for the quality-vs-speed chart."""
    rows = list(rows)
    reps = sorted({r.repeats for r in rows if r.repeats})  # ticked runs may have timed different rounds
    out = "" if not reps else f", median of {reps[0]}{f'-{reps[-1]}' if len(reps) > 1 else ''} rounds"
    out += spread_text(r.decode_spread[min(r.decode_spread, key=_batch)] for r in rows if r.decode_spread)
    return out + ("; *: loaded CPU" if any(r.under_load for r in rows) else "")


def _batch(b: str) -> int:
    return int(b) if b.isdigit() else 0


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None
