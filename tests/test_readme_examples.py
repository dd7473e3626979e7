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
