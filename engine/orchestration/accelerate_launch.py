"""`python -m engine.orchestration.accelerate_launch ARGS`: `accelerate launch ARGS` without the launcher's
own traceback.

When a rank exits non-zero, accelerate's launcher raises: the simple launcher a
`subprocess.CalledProcessError("... returned non-zero exit status 130")` (accelerate 1.16,
commands/launch.py _run_subprocess), torchrun's agent a `ChildFailedError`. Both print a traceback into
the stage's stdout.log, which the orchestrator echoes, after every cancel (the ranks exit 130) and after
every failure the rank has already reported itself. Here the launcher exits with the rank's code
instead (130: cancelled, 2: a user error), so the orchestrator reads the same codes as without a
launcher and says what happened once. Any other error of the launcher keeps its traceback.

The launcher process only: it imports accelerate (and torch); nothing imports this module.
"""

from __future__ import annotations

import signal
import subprocess
import sys


def exit_code(code: int) -> int:
    """A process's exit code as a shell gives it: killed by signal N (Popen's -N) is 128 + N."""
    return 128 - code if code < 0 else code


def _say_killed(code: int) -> None:
    """A rank killed by a signal (the OOM killer's SIGKILL) prints nothing itself: one line for it."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        print(f"a stage process was killed by {name}", file=sys.stderr, flush=True)


def rank_exit_code(error: BaseException) -> int | None:
    """The exit code to leave with for a launcher error that only says a rank failed; None for others."""
    if isinstance(error, subprocess.CalledProcessError):
        _say_killed(error.returncode)
        return exit_code(error.returncode)
    failures = getattr(error, "failures", None)  # torch.distributed.elastic's ChildFailedError
    if type(error).__name__ != "ChildFailedError" or not isinstance(failures, dict) or not failures:
        return None
    codes = [int(getattr(f, "exitcode", 1)) for f in failures.values()]
    if 130 in codes:  # cancelled: the others stopped with it
        return 130
    for code in codes:
        _say_killed(code)
    return exit_code(next((c for c in codes if c), 1))


def main(argv: list[str] | None = None) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args(argv)
    try:
        launch_command(args)
    except Exception as e:
        code = rank_exit_code(e)
        if code is None:
            raise
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
