"""The README's `$ slimlab-engine check ...` examples are what `check` prints today.

Each example is a `    $ slimlab-engine ...` line (a trailing backslash continues it) followed by the
output it shows; `...` stands for lines left out. The test runs the command and wants every shown line,
in order, and exit code 2 where the example shows an error. `check` reads only configs: no weights, no GPU.
"""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_examples() -> list[tuple[str, list[str]]]:
    """(command, the output lines shown) for each `$ slimlab-engine check` block of the README."""
    lines = (ROOT / "README.md").read_text().splitlines()
    examples, i = [], 0
    while i < len(lines):
        if not lines[i].startswith("    $ slimlab-engine check "):
            i += 1
            continue
        command = lines[i][len("    $ "):]
        while command.endswith("\\"):
            i += 1
            command = command[:-1] + lines[i].strip()
        i += 1
        shown = []
        while i < len(lines) and lines[i].startswith("    ") and not lines[i].startswith("    $ "):
            shown.append(lines[i][4:])
            i += 1
        examples.append((command, shown))
    return examples


EXAMPLES = readme_examples()


def test_the_readme_has_check_examples() -> None:
    assert len(EXAMPLES) >= 2, "the README's check examples were not found: the parser or the README changed"


@pytest.mark.parametrize("command,shown", EXAMPLES, ids=[c[:60] for c, _ in EXAMPLES])
def test_a_readme_check_example_prints_what_it_shows(command: str, shown: list[str]) -> None:
    argv = shlex.split(command)
    assert argv[0] == "slimlab-engine"
    done = subprocess.run([sys.executable, "-m", "engine", *argv[1:]], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    printed = (done.stdout + done.stderr).splitlines()
    assert done.returncode == (2 if any(s.startswith("error:") for s in shown) else 0), done.stderr
    at = 0
    for line in (s for s in shown if s.strip() != "..."):
        matches = [j for j in range(at, len(printed)) if printed[j] == line]
        assert matches, f"the README shows {line!r}; check printed:\n" + "\n".join(printed)
        at = matches[0] + 1


def readme_commands() -> list[str]:
    """Every `slimlab-engine ...` command line the README shows (continuations joined, comments dropped)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    commands, i = [], 0
    while i < len(lines):
        text = lines[i].strip().removeprefix("$ ")
        if lines[i].startswith("    ") and text.startswith("slimlab-engine "):
            while text.endswith("\\"):
                i += 1
                text = text[:-1] + lines[i].strip()
            commands.append(text.split("  #")[0].strip())
        i += 1
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_commands() -> None:
    assert len(COMMANDS) >= 20, "the README's commands were not found: the parser or the README changed"


@pytest.mark.parametrize("command", COMMANDS, ids=[c[15:75] for c in COMMANDS])
def test_a_readme_command_parses_and_its_file_and_keys_are_valid(command: str, tmp_path) -> None:
    """The engine's own parser takes it; a `run` or `check` of a file in the repository: `check` of that file
    with the same `--set`s exits 0 (keys, values and targets valid), so a copied command does not fail on a
    renamed key or a stale value. A `run --slurm` writes its script (into a temporary runs directory, not
    submitted). The refusal the README shows on purpose is the test above's."""
    from engine.cli import build_parser

    argv = shlex.split(command)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"the README's {command!r} does not parse (exit {e.code})")
    file = getattr(args, "file", None)
    if argv[0] not in ("run", "check") or file is None or not (ROOT / file).exists():
        return
    if command in (c for c, shown in EXAMPLES if any(line.startswith("error:") for line in shown)):
        return
    if getattr(args, "slurm", False):
        check = ["run", *[a for a in argv[1:] if a != "--submit"], "--runs-dir", str(tmp_path)]
    else:
        sets = [a for s in getattr(args, "set", None) or [] for a in ("--set", s)]
        check = ["check", file, *sets, "--gpu-memory", "80", "--gpus", "0-7"]
    done = subprocess.run([sys.executable, "-m", "engine", *check], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{command}:\n{done.stderr[-2000:]}"
