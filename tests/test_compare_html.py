"""`compare --html`: report.md as one self-contained page, the charts embedded (nothing to fetch)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from _app_util import finished_run

from engine.compare.html import report_html

ROOT = Path(__file__).resolve().parent.parent


def test_compare_html_is_one_self_contained_page(tmp_path):
    run = finished_run(tmp_path / "runs", "paged").root
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "engine", "compare", str(run), "--html", "--out", str(out),
                        "--no-chart"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>slimlab report: paged</title>" in page
    assert page.count("<table>") >= 1 and "<th>model</th>" in page and "<td>teacher</td>" in page
    assert 'src="data:image/png;base64,' in page  # the validation-loss chart, embedded
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from elsewhere
    assert "report.html" in r.stdout


def test_the_converter_keeps_markup_out_and_says_a_missing_image(tmp_path):
    page = report_html("# a <b>\n\n| x | y |\n|---|---|\n| `1` | 2 |\n\n- one\n- two\n\n![c](gone.png)\n",
                       tmp_path, "t")
    assert "<h1>a &lt;b&gt;</h1>" in page and "<td><code>1</code></td>" in page
    assert "<ul><li>one</li><li>two</li></ul>" in page and "gone.png not found" in page
