"""The README's commands work when copied.

- Every `slimlab-engine ...` line (indented as code; a trailing backslash continues it, `  #` starts a comment)
  parses with the engine's own parser, and a `run` or `check` of a file in the repository passes `check` with
  the same `--set`s: no stale flag, key or value.
- An example written as `    $ slimlab-engine check ...` followed by its output prints that output today
  (`...` stands for lines left out), with exit code 2 where it shows an error. `check` reads only configs:
  no weights, no GPU.
"""

import shlex
import subprocess
import sys

import pytest

from tests._train_util import ROOT, engine_env


def readme_commands() -> list[tuple[str, list[str]]]:
    """(command, the output lines shown below it: only after a `$ ` prompt) for each command of the README."""
    lines = (ROOT / "README.md").read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        text = lines[i].strip()
        prompt = text.startswith("$ ")
        if not (lines[i].startswith("    ") and text.removeprefix("$ ").startswith("slimlab-engine ")):
            i += 1
            continue
        command = text.removeprefix("$ ")
        while command.endswith("\\"):
            i += 1
            command = command[:-1] + lines[i].strip()
        i += 1
        shown = []
        while prompt and i < len(lines) and lines[i].startswith("    ") and not lines[i].startswith("    $ "):
            shown.append(lines[i][4:])
            i += 1
        found.append((command.split("  #")[0].strip(), shown))
    return found


COMMANDS = readme_commands()
EXAMPLES = [(c, shown) for c, shown in COMMANDS if shown]
REFUSALS = {c for c, shown in EXAMPLES if any(line.startswith("error:") for line in shown)}


def test_the_readme_shows_commands_and_check_examples() -> None:
    assert len(COMMANDS) >= 20 and len(EXAMPLES) >= 2 and REFUSALS, (
        "the README's commands were not found: the parser or the README changed")


def _engine(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *argv], cwd=ROOT, env=engine_env(), capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("command,shown", EXAMPLES, ids=[c[15:75] for c, _ in EXAMPLES])
def test_a_readme_check_example_prints_what_it_shows(command: str, shown: list[str]) -> None:
    done = _engine(shlex.split(command)[1:])
    printed = (done.stdout + done.stderr).splitlines()
    assert done.returncode == (2 if command in REFUSALS else 0), done.stderr
    at = 0
    for line in (s for s in shown if s.strip() != "..."):
        matches = [j for j in range(at, len(printed)) if printed[j] == line]
        assert matches, f"the README shows {line!r}; check printed:\n" + "\n".join(printed)
        at = matches[0] + 1


@pytest.mark.parametrize("command", [c for c, _ in COMMANDS], ids=[c[15:75] for c, _ in COMMANDS])
def test_a_readme_command_parses_and_its_file_and_keys_are_valid(command: str, tmp_path) -> None:
    """A `run --slurm` writes its script (into a temporary runs directory, not submitted); the refusal the
    README shows on purpose is the test above's."""
    from engine.cli import build_parser

    argv = shlex.split(command)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"the README's {command!r} does not parse (exit {e.code})")
    file = getattr(args, "file", None)
    if argv[0] not in ("run", "check") or file is None or not (ROOT / file).exists() or command in REFUSALS:
        return
    if getattr(args, "slurm", False):
        check = ["run", *[a for a in argv[1:] if a != "--submit"], "--runs-dir", str(tmp_path)]
    else:
        check = ["check", file, *[a for s in args.set or [] for a in ("--set", s)], "--gpu-memory", "80", "--gpus", "0-7"]
    done = _engine(check)
    assert done.returncode == 0, f"{command}:\n{done.stderr[-2000:]}"
