"""`slimlab-engine run | status | cancel | compare`: the orchestrator's commands."""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.config import ConfigError
from engine.contract import (
    MetricsSummary,
    RunInfo,
    RunLayout,
    RunScanner,
    StageInfo,
    age,
    list_runs,
    parse_iso,
)
from engine.contract.divergence import divergence
from engine.errors import UserError


def add_pipeline_commands(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("run", help="run (or resume) every stage of an experiment")
    common(p)
    p.add_argument("--only", action="append", metavar="STAGE", default=[],
                   help="run just this stage (repeatable); e.g. --only distill-width")
    p.add_argument("--from", dest="from_stage", metavar="STAGE",
                   help="rerun this stage and every stage after it")
    p.add_argument("--gpus", metavar="LIST", help="GPUs to use, e.g. 0,1 or 0-3; 'none' runs on the CPU")
    p.add_argument("--detach", action="store_true",
                   help="start in the background (own session); print the run directory and return")
    p.add_argument("--dry-run", action="store_true", help="print what would run, and each stage's command")
    p.add_argument("--force", action="store_true",
                   help="start a stage afresh even when that discards its checkpoints (a non-resumable --set)")
    p.add_argument("--slurm", action="store_true", help="write <run>/slurm.sbatch for [launch].nodes nodes")
    p.add_argument("--submit", action="store_true", help="with --slurm: submit the script with sbatch")
    p.add_argument("--gpus-per-node", type=int, metavar="N", help="with --slurm: GPUs on each node")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="with --slurm: an extra #SBATCH line, e.g. --sbatch=--partition=gpu (repeatable)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="states, steps and last losses of one run (or of every run)")
    p.add_argument("run_dir", nargs="?", help="a run directory (default: every run under --runs-dir)")
    p.add_argument("--runs-dir", default="runs", help="where run directories live (default: runs)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="stop a run: its stages save a checkpoint, then stop; `run` resumes it")
    p.add_argument("run_dir", help="the run directory, e.g. runs/demo")
    p.add_argument("--grace", type=float, default=None,
                   help="wait at least this many seconds for the stages to stop (default 20; longer when their "
                        "measured step and checkpoint times need it; a checkpoint being written is always "
                        "waited for)")
    p.add_argument("--now", action="store_true",
                   help="SIGKILL at once, without waiting for a checkpoint (as does a second cancel)")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("compare", help="a table and loss chart of the students of one or more runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="where report.md and val_loss.png go (default: the first run directory)")
    p.add_argument("--no-chart", action="store_true", help="skip the terminal chart")
    p.add_argument("--samples", action="store_true", help="print every model's greedy samples side by side")
    p.add_argument("--html", action="store_true",
                   help="also write report.html: one self-contained page (tables, charts embedded) to attach or mail")
    p.set_defaults(func=cmd_compare)


# ---- run --------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    import sys

    from engine.orchestration.launch import parse_gpus
    from engine.orchestration.run import RunOptions, run_pipeline
    from engine.orchestration.slurm import write_slurm

    opts = RunOptions(file=args.file, overrides=args.set or [], only=args.only, from_stage=args.from_stage,
                      gpus=parse_gpus(args.gpus) if args.gpus is not None else None,
                      runs_dir=args.runs_dir, detach=args.detach, dry_run=args.dry_run, force=args.force)
    if args.submit and not args.slurm:
        raise ConfigError("--submit goes with --slurm: slimlab-engine run FILE --slurm --submit")
    if args.slurm:
        return write_slurm(opts, args.submit, args.gpus_per_node, args.sbatch)
    return run_pipeline(opts, argv=list(sys.argv))


# ---- status -----------------------------------------------------------------------------------


def _ago(iso: str | None) -> str:
    t = parse_iso(iso)
    return age(time.time() - t.timestamp()) if t else "-"


def _step(s: StageInfo, layout: RunLayout) -> int | None:
    """The furthest step reached: status.json can lag the last checkpoint (one saved on cancel)."""
    from engine.contract.checkpoints import latest_checkpoint

    ckpt = latest_checkpoint(layout.checkpoints_dir(s.name))
    steps = [x for x in (s.step if s.state != "pending" else None, ckpt[0] if ckpt else None) if isinstance(x, int)]
    return max(steps) if steps else None


def _stage_json(s: StageInfo, layout: RunLayout, metrics: MetricsSummary | None) -> dict[str, Any]:
    return {"stage": s.name, "state": s.state, "step": _step(s, layout), "total_steps": s.total_steps,
            "train_loss": s.train_loss, "val_loss": s.val_loss, "tokens_per_s": s.tokens_per_s,
            "updated_at": s.updated_at, "gpus": list(s.gpus), "error": s.error, "note": s.note,
            "warning": divergence(metrics.vals) if metrics else None}


def run_summary(run_dir: Path) -> dict[str, Any]:
    """One run of `status --json`: the TUI's snapshot of it (engine.contract.scan), metrics read whole."""
    layout = RunLayout(run_dir)
    scanner = RunScanner(layout.root.parent, history=True)
    run = scanner.scan_run(layout.root)
    if run is None:  # neither experiment.toml nor status.json (yet)
        run = RunInfo(name=layout.root.name, path=layout.root, state="pending", stages=(), created=0.0)
    return {"run": str(run_dir), "name": run.name, "state": run.state, "stage": run.pipeline_stage,
            "pid": run.pipeline_pid, "host": run.host, "started_at": run.started_at,
            "updated_at": run.updated_at, "error": run.error,
            "stages": [_stage_json(s, layout, scanner.stage_metrics(layout.root, s.name)) for s in run.stages]}


def _f(x: Any, digits: int = 3) -> str:
    return "-" if not isinstance(x, (int, float)) else f"{x:.{digits}f}"


STATE_STYLE = {"succeeded": "green", "running": "cyan", "failed": "red", "cancelled": "yellow",
               "pending": "dim", "excluded": "dim"}


def print_run(summary: dict[str, Any], console) -> None:
    from rich import box
    from rich.table import Table

    state = summary["state"]
    head = f"[bold]{summary['name']}[/bold]  {summary['run']}  [{STATE_STYLE.get(state, '')}]{state}[/]"
    if summary.get("pid") and state == "running":
        head += f"  (pid {summary['pid']} on {summary['host']}, started {_ago(summary['started_at'])} ago)"
    console.print(head)
    if summary.get("error") and state in ("failed", "cancelled"):
        console.print(f"  {summary['error']}", markup=False)
    t = Table(show_edge=False, pad_edge=False, box=box.SIMPLE_HEAD)
    for c in ("stage", "state", "step", "train loss", "val loss", "tokens/s", "updated"):
        t.add_column(c, justify="left" if c in ("stage", "state") else "right", no_wrap=True)
    for s in summary["stages"]:
        step = "-" if s["step"] is None else (f"{s['step']}/{s['total_steps']}" if s["total_steps"] else str(s["step"]))
        t.add_row(s["stage"], f"[{STATE_STYLE.get(s['state'], '')}]{s['state']}[/]", step, _f(s["train_loss"]),
                  _f(s["val_loss"]), _f(s["tokens_per_s"], 0), _ago(s["updated_at"]))
    console.print(t)
    for s in summary["stages"]:
        if s.get("note"):  # a cancel in progress: "cancelling: saving checkpoint at step N"
            console.print(f"  {s['stage']}: {s['note']}", markup=False, highlight=False)
        if s["error"] and s["state"] in ("failed", "cancelled"):
            console.print(f"  {s['stage']}: {s['error']}", markup=False, highlight=False)
        if s["warning"]:
            console.print(f"  {s['stage']}: warning: {s['warning']}", markup=False, highlight=False)


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    if args.run_dir:
        run_dir = _run_dir_arg(args.run_dir, args.runs_dir)
        summary = run_summary(run_dir)
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print_run(summary, console)
        return 0
    runs = list_runs(args.runs_dir)
    summaries = [run_summary(r) for r in runs]
    if args.json:
        print(json.dumps(summaries, indent=2))
        return 0
    if not runs:
        console.print(f"no runs under {args.runs_dir}/; start one with `slimlab-engine run experiments/demo.toml`")
        return 0
    from rich import box
    from rich.table import Table

    t = Table(show_edge=False, pad_edge=False, box=box.SIMPLE_HEAD)
    for c in ("run", "state", "stage", "progress", "updated"):
        t.add_column(c, no_wrap=True)
    t.add_column("note", overflow="fold", ratio=1)
    for s in summaries:
        done = sum(1 for x in s["stages"] if x["state"] == "succeeded")
        cur = next((x for x in s["stages"] if x["stage"] == s["stage"]), None)
        step = f" {cur['step']}/{cur['total_steps']}" if cur and cur.get("total_steps") and s["state"] == "running" else ""
        t.add_row(s["run"], f"[{STATE_STYLE.get(s['state'], '')}]{s['state']}[/]", (s["stage"] or "-") + step,
                  f"{done}/{len(s['stages'])} stages", _ago(_heartbeat(s)),
                  next((x["note"] for x in s["stages"] if x.get("note")), None) or _diverged(s) or (s["error"] or "")[:60])
    console.print(t)
    return 0


def _diverged(summary: dict[str, Any]) -> str | None:
    """The run list's flag for stages whose validation loss blew up ("succeeded" alone said nothing)."""
    names = [x["stage"] for x in summary["stages"] if x.get("warning")]
    return f"⚠ val loss rose: {', '.join(names)}" if names else None


def _heartbeat(summary: dict[str, Any]) -> str | None:
    """When a run last showed life: a running run's running stage's own heartbeat (the orchestrator keeps
    writing its status.json while a stage is stopped or hung), else the run's status.json."""
    running = [s for s in summary["stages"] if s["state"] == "running" and s.get("updated_at")]
    return min(s["updated_at"] for s in running) if summary["state"] == "running" and running else \
        summary["updated_at"]


def _run_dir_arg(arg: str, runs_dir: str) -> Path:
    """A run directory, a run name under --runs-dir, or an experiment file (-> its run directory)."""
    p = Path(arg)
    if p.is_dir():
        layout = RunLayout(p)
        if not (layout.experiment_file.exists() or layout.status_file.exists()):
            raise ConfigError(f"{arg}: not a run directory (no experiment.toml or status.json); list runs with "
                              "`slimlab-engine status --runs-dir DIR`")
        return p
    if p.suffix == ".toml" and p.is_file():
        from engine.config import load_experiment

        return load_experiment(p).run_dir
    if (Path(runs_dir) / arg).is_dir():
        return Path(runs_dir) / arg
    raise ConfigError(f"{arg}: no such run directory; list runs with `slimlab-engine status --runs-dir DIR`")


# ---- cancel / compare --------------------------------------------------------------------------


def cmd_cancel(args: argparse.Namespace) -> int:
    from engine.orchestration.cancel import cancel_run

    if args.grace is not None and not (math.isfinite(args.grace) and args.grace >= 0):
        raise ConfigError(f"--grace: {args.grace} is not a number of seconds >= 0; e.g. --grace 20")
    return cancel_run(args.run_dir, grace=args.grace, now=args.now)


def cmd_compare(args: argparse.Namespace) -> int:
    from engine.compare import compare
    from engine.contract.files import DamagedFile

    try:
        compare(args.run_dirs, out_dir=args.out, chart=not args.no_chart, samples=args.samples, html=args.html)
    except DamagedFile as e:  # hand-edited or foreign: name the runs and the way out
        raise UserError(f"{', '.join(map(str, args.run_dirs))}: {e}; rerun the stage that wrote it, or restore "
                        "the file") from e
    return 0
