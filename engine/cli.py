"""`slimlab-engine` / `python -m engine`: the headless command line.

User mistakes exit with code 2 and one line on stderr; no traceback.
Heavy modules (torch, transformers) are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from engine.config import Experiment, load_experiment
from engine.errors import ConfigError, UserError
from engine.stages import KINDS, kind_of, resolve_stage


def _load_body(ref: str) -> Callable:
    module, func = ref.split(":")
    return getattr(importlib.import_module(module), func)


def stage_body(stage: str) -> Callable:
    return _load_body(kind_of(stage).body)


def _load(args: argparse.Namespace) -> Experiment:
    exp = load_experiment(args.file, args.set or [])
    if getattr(args, "runs_dir", None):
        exp.runs_dir = args.runs_dir
    return exp


def cmd_stage(args: argparse.Namespace) -> int:
    from engine.orchestration.stage_process import run_stage, run_stages

    exp = _load(args)
    # `prune FILE --stage prune-width` or `--stage width`; the only one when unambiguous
    given = args.stage or [None]
    stages = [resolve_stage(exp.stages(), s, source=str(exp.source), flag="--stage", kind=args.command)
              for s in given]
    _inputs_done(exp, stages)
    from engine.orchestration.run_dir_safety import check_links

    check_links(exp.run_dir, exp.source)  # as `run` does: never write or delete through a link out of the run
    if len(stages) == 1:
        return run_stage(exp, stages[0], stage_body(stages[0]))
    group_body = kind_of(stages[0]).group_body
    if group_body is None or len(set(stages)) != len(stages):
        raise UserError(f"--stage: {args.command} runs one stage per process (distill: several distinct "
                        "students, over one teacher)")
    return run_stages(exp, stages, _load_body(group_body))


def _inputs_done(exp: Experiment, stages: list[str]) -> None:
    """A single stage runs only once its inputs are there: a distill started before its prune failed late
    and left a stray status.json in a run that had nothing else. (eval reads whatever models exist.)"""
    from engine.contract import RunLayout
    from engine.contract.outputs import missing_output
    from engine.stages import stage_deps

    layout, deps = RunLayout(exp.run_dir), stage_deps(exp.stages())
    for stage in stages:
        if "*" in kind_of(stage).inputs:
            continue
        for dep in deps[stage]:
            if missing_output(layout, dep):
                raise UserError(f"{exp.source}: {stage} reads the output of {dep}, which is not there yet; run "
                                f"{dep} first, or the whole pipeline: slimlab-engine run {exp.source}")


def cmd_check(args: argparse.Namespace) -> int:
    exp = _load(args)
    from engine.orchestration.check import describe_plan

    gpus = None
    if args.gpus is not None:
        from engine.orchestration.launch import parse_gpus

        gpus = len(parse_gpus(args.gpus))
    for line in describe_plan(exp, gpu_gib=args.gpu_memory, gpus=gpus):
        print(line)
    return 0


def _gib(text: str) -> float:
    try:
        value = float(text.removesuffix("GiB").removesuffix("G"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in GiB; write e.g. 80") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive size in GiB, e.g. 80")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="experiment TOML file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key, e.g. --set distill.steps=100 (repeatable)")
    p.add_argument("--runs-dir", help="where run directories live (default: the file's runs_dir)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="slimlab-engine", description="Minitron-style prune + distill of HF LLMs")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate a file; print the stage plan, parameter counts, memory and disk")
    _common(p)
    p.add_argument("--gpu-memory", type=_gib, metavar="GIB",
                   help="predict for GPUs of this size (e.g. 80), not this machine's (plan a GPU run on a laptop)")
    p.add_argument("--gpus", metavar="LIST",
                   help="with --gpu-memory: plan for these GPUs (0-7: eight), as `run --gpus` would use them")
    p.set_defaults(func=cmd_check)

    for kind in (k.name for k in KINDS):
        p = sub.add_parser(kind, help=f"run one {kind} stage in this process")
        _common(p)
        p.add_argument("--stage", action="append",
                       help=f"stage name, e.g. {kind}-width (needed when there are several; distill: "
                            "repeat it to train several students over one teacher forward)")
        p.set_defaults(func=cmd_stage)

    # run / status / cancel / compare live with the orchestrator
    from engine.orchestration.commands import add_pipeline_commands

    add_pipeline_commands(sub, _common)
    # export: a student as a self-contained Hugging Face folder with a model card
    from engine.export import add_export_command

    add_export_command(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
