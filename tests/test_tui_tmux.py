"""The TUI in a real terminal: benchmarks/tui_tmux_session.py drives `python -m app` in tmux at 80x24
(TERM=tmux-256color, COLORTERM unset) with send-keys and checks every captured screen.

The quick session (compose: open a file, retype a field, save; light theme and back; ctrl+q) takes
seconds and runs with the other tests when tmux is installed. The full one (launch a tiny CPU run, cancel
it mid-distillation, resume, quit the TUI and come back in a new one,
watch it to the end, Compare, themes) takes a minute or more on a loaded machine, so it runs only
with SLIMLAB_TMUX_FULL=1. Both are skipped without tmux.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "tui_tmux_session.py"

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


def _session(out: Path, *args: str, timeout: int = 600) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COLORTERM", "TMUX")}
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--timeout", str(timeout), *args],
                       capture_output=True, text=True, timeout=1700, env=env, cwd=ROOT)
    summary = json.loads((out / "summary.json").read_text())
    assert r.returncode == 0 and summary["ok"], f"{summary['error']}\n{r.stdout}\n{r.stderr}"
    for entry in summary["screens"]:  # every screen saved as text, 24 lines of at most 80 columns
        lines = (out / f"{entry['screen']}.txt").read_text().splitlines()
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines), entry
        assert (out / f"{entry['screen']}.ansi").read_text().startswith("\x1b[")
    # the header (nav bar) is painted in every theme: no cell on the terminal's default background
    assert summary["header"] and any(k.startswith("light") for k in summary["header"])
    for theme, check in summary["header"].items():
        assert check["header_cells"] == 80 and check["header_default_cells"] == 0, (theme, check)
    return summary


@pytest.mark.slow
@needs_tmux
def test_tmux_quick_session(tmp_path):
    summary = _session(tmp_path / "screens", "--quick", timeout=180)
    names = [e["screen"] for e in summary["screens"]]
    assert names == ["01-runs-empty", "02-compose-new", "03-open-dialog", "04-compose-loaded", "05-compose-edited",
                     "06-compose-burst", "07-runs-after-esc", "08-compose-back", "09-compose-saved",
                     "10-compose-light", "11-compose-dark"]
    light = summary["header"]["light (compose)"]
    dark = summary["header"]["dark"]
    assert light["header_bg"] != dark["header_bg"]  # ctrl+t changed the theme
    assert summary["header"]["dark again"]["header_bg"] == dark["header_bg"]


@pytest.mark.slow
@needs_tmux
@pytest.mark.skipif(os.environ.get("SLIMLAB_TMUX_FULL") != "1",
                    reason="a real training run in tmux, minutes on a loaded CPU: set SLIMLAB_TMUX_FULL=1")
def test_tmux_full_session(tmp_path):
    summary = _session(tmp_path / "screens")
    names = [e["screen"] for e in summary["screens"]]
    assert names[5:19] == ["06-compose-burst", "07-runs-after-esc", "08-compose-back", "09-launched",
                           "10-detail-training", "11-cancel-ask", "12-detail-cancelled", "13-detail-resumed",
                           "14-runs-returned", "15-detail-done", "16-detail-log", "17-runs-table", "18-compare",
                           "19-compare-curves"]
    cancelled = (tmp_path / "screens" / "12-detail-cancelled.txt").read_text()
    assert "⊘ cancelled" in cancelled and re.search(r"distill-\w+ cancelled +step \d+/300", cancelled)
    which = (tmp_path / "screens" / "18-compare.txt").read_text()
    assert "which student?" in which and "★" in which
    compare = (tmp_path / "screens" / "19-compare-curves.txt").read_text()
    assert "tmux-demo/distill-depth" in compare and "tmux-demo/distill-width" in compare
