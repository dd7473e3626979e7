"""`check`: the stage plan of an experiment, before any weights are loaded.

No torch import: the TUI validates as the user types through this module.
"""

from __future__ import annotations

from engine.config import ConfigError, Experiment
from engine.evaluation.task_specs import check_tasks
from engine.orchestration.launch import detect_gpus
from engine.orchestration.preflight import preflight
from engine.resources.fit import resource_lines, this_machine
from engine.search.audit import check_lines as audit_check_lines
from engine.shapes.targets import check_speed_lengths, shape_lines


def describe_plan(exp: Experiment, resources: bool = True, gpu_gib: float | None = None,
                  gpus: int | None = None) -> list[str]:
    """The plan's lines; ConfigError (one line, the fix) on the first problem. `resources`: predict each
    stage's memory and the run's disk on this machine (or on GPUs of `gpu_gib` GiB) and refuse what
    cannot fit there; on a machine without GPUs (a laptop planning a GPU run) the CPU's shortfall is said,
    not refused: `run` refuses it."""
    lines = [f"experiment {exp.name}  ({exp.source})", f"run directory: {exp.run_dir}", "stages:"]
    lines += [f"  {i + 1}. {s}" for i, s in enumerate(exp.stages())]
    preflight(exp)  # model, tokenizer and data files; vocabulary; layer_map
    lines += shape_lines(exp)  # teacher/student shapes and params; ConfigError on an impossible target
    lines += audit_check_lines(exp)  # a search's audit: its extra distillations
    tasks = check_tasks(exp)  # lm-eval installed and local task files there, before anything runs
    if tasks:
        lines.append("eval tasks: " + ", ".join(t.entry for t in tasks))
    if resources:
        if gpus is None:
            gpus = len(detect_gpus())
            if gpu_gib is not None and isinstance(exp.launch.gpus, list):
                gpus = len(exp.launch.gpus)  # planning for the file's GPUs, elsewhere
        machine = this_machine(gpus, gpu_gib)
        check_speed_lengths(exp, "cuda" if machine.cuda else "cpu")
        try:
            lines += resource_lines(exp, machine, refuse=True)
        except ConfigError as e:
            if machine.cuda:
                raise
            lines += resource_lines(exp, machine, refuse=False)
            lines.append(f"  not on this machine's CPU: {str(e).split(': ', 1)[1]} (`run` refuses it here; "
                         "check --gpu-memory GIB plans for a GPU)")
    return lines
