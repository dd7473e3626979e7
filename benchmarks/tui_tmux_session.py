"""A scripted slimlab TUI session in tmux at 80x24 (issue 15): compose, launch, watch, compare,
light theme; every screen saved as text.

The TUI runs in a detached tmux session on its own server socket (`tmux -L NAME`, so no other
tmux is touched), 80 columns by 24 rows, TERM=tmux-256color and COLORTERM unset (256 colours, as
over a plain SSH session into tmux), in a temporary workspace with relative `runs/` and
`experiments/` directories (the screens then read the same from run to run). Keys go in with
`tmux send-keys`; after each step the pane is captured twice: `capture-pane -p` (the text, saved as
NN-step.txt) and `capture-pane -p -e -N` (with the colour escapes, NN-step.ansi). Every wait polls the
captured text for what the step must show, with a generous timeout, and fails naming what it waited
for and printing the last screen. Nothing depends on timing.

Steps (full session):
  01 runs-empty        the Runs screen of an empty runs directory
  02 compose-new       2: Compose with a new experiment (not valid: no teacher yet)
  03 open-dialog       ctrl+o: the file picker lists experiments/tiny.toml
  04 compose-loaded    its path typed, enter: the tiny experiment loaded and valid (7 stages)
  05 compose-edited    tab, then the name field retyped to tmux-demo; still valid
  06 compose-burst     one send-keys: 9 tabs to the teacher's layers, then `3 Tab 8 Tab 2` (with ctrl+u
                       before each): layers 3, heads 8, kv heads 2, each in its own field; still valid
  07 runs-after-esc    one send-keys: esc 1 (one read: the terminal's alt+1): the field is left, Runs shown
  08 compose-back      2: Compose again, the three fields as the burst left them
  09 launched          ctrl+l: saved, `slimlab-engine run --detach`, Run detail of the new run
  10 detail-training   Run detail while the students are being pruned and distilled
  11 cancel-ask        c: the cancel question (its default keeps the run going)
  12 detail-cancelled  y: the run cancelled mid-distillation, its checkpoint saved
  13 detail-resumed    r: resumed (detached) from the checkpoints
  14 runs-returned     ctrl+q while it runs, then a new TUI (as after an SSH reconnect): the run is listed
  15 detail-done       enter: its Run detail; the run succeeded (7/7 stages)
  16 detail-log        l: the Log tab of the last stage
  17 runs-table        1: the run in the Runs table, succeeded
  18 compare           3: Compare's first view, "which student?": a row per student, the best marked
  19 compare-curves    w: the run's students ticked, their curves and the eval results table
  20 compare-light     ctrl+t: the light theme
  21 runs-light        1: Runs in the light theme
  22 runs-dark         ctrl+t: back to the dark theme
then ctrl+q quits, and the TUI's process must exit with status 0.

`--quick` (what tests/test_tui_tmux.py runs by default) does 01-08, saves with ctrl+s instead of
launching, then the theme steps on Compose: no training run, well under a minute. (The full session
does 01-08, then launches the burst-edited experiment.)

The light-theme check: in the `-e` captures the script reads the background colour of every cell
of the header (the NavBar, row 1) and of the rows below it, and writes to summary.json/summary.txt
whether the header keeps a background of its own (no cell on the terminal's default background,
and a colour that differs from the body's most common one) in each theme.

    python benchmarks/tui_tmux_session.py                 # full session, screens in benchmarks/tui_tmux/
    python benchmarks/tui_tmux_session.py --quick --out /tmp/screens
    python benchmarks/tui_tmux_session.py --term screen-256color --timeout 900

Exit status: 0 when every step passed, 1 when a wait failed (the message names the step), 2 when
tmux is missing.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 80, 24
RUN_NAME = "tmux-demo"

# The smallest experiment that still has every stage: prepare (builtin data, a tokenizer trained on
# it), fine-tune of a scratch teacher, a depth and a width student pruned and distilled, eval.
# ~40 s on a 2-core CPU with nothing else running.
TINY = """\
# the tmux session's experiment: every stage, tiny sizes, CPU
name = "tmux-tiny"

[model]
init = "scratch"
dtype = "float32"
arch = {model_type = "llama", hidden_size = 64, intermediate_size = 128, num_hidden_layers = 4, num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 64, tie_word_embeddings = true}
tokenizer_train_vocab = 512

[data]
dataset = "builtin:stdlib-docs"
seq_length = 32
workers = 1
max_tokens = 40000
validation_fraction = 0.05
test_fraction = 0.05

[finetune]
steps = 40
global_batch_size = 8
micro_batch_size = 8
lr = 3e-3
warmup_steps = 2
val_interval = 10
val_batches = 2
checkpoint_interval = 20

[[prune]]
name = "depth"
method = "depth"
num_layers = 2
calibration_samples = 16

[[prune]]
name = "width"
method = "width"
ffn_hidden_size = 64
hidden_size = 48
calibration_samples = 16

[distill]
steps = 300                      # long enough for the full session to cancel it mid-way
global_batch_size = 8
micro_batch_size = 8
lr = 2e-3
warmup_steps = 2
val_interval = 50
val_batches = 2
checkpoint_interval = 100

[eval]
splits = ["validation"]
batches = 2
micro_batch_size = 8
speed = false
prompts = []

[launch]
mixed_precision = "no"
"""


class StepFailed(Exception):
    pass


# ---- reading `capture-pane -e` ------------------------------------------------------------------

_ESC = re.compile(r"\x1b\[([0-9;:]*)([A-Za-z])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][A-Za-z0-9]")
_BASIC = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"]


@dataclass
class Pen:
    fg: str | None = None  # None: the terminal's default
    bg: str | None = None
    reverse: bool = False

    def sgr(self, params: list[str]) -> None:
        i = 0
        while i < len(params):
            p = int(params[i] or 0)
            if p == 0:
                self.fg = self.bg = None
                self.reverse = False
            elif p == 7:
                self.reverse = True
            elif p == 27:
                self.reverse = False
            elif p in (38, 48):
                mode = int(params[i + 1]) if i + 1 < len(params) else 0
                if mode == 5 and i + 2 < len(params):
                    value, i = params[i + 2], i + 2
                elif mode == 2 and i + 4 < len(params):
                    value, i = "#" + "".join(f"{int(x):02x}" for x in params[i + 2:i + 5]), i + 4
                else:
                    value = None
                if p == 38:
                    self.fg = value
                else:
                    self.bg = value
            elif p == 39:
                self.fg = None
            elif p == 49:
                self.bg = None
            elif 30 <= p <= 37:
                self.fg = _BASIC[p - 30]
            elif 40 <= p <= 47:
                self.bg = _BASIC[p - 40]
            elif 90 <= p <= 97:
                self.fg = "bright_" + _BASIC[p - 90]
            elif 100 <= p <= 107:
                self.bg = "bright_" + _BASIC[p - 100]
            i += 1

    def shown_bg(self) -> str:
        """The colour the cell's background is painted in ("default": the terminal's own)."""
        colour = self.fg if self.reverse else self.bg
        return colour or "default"


def cell_backgrounds(ansi: str) -> list[list[str]]:
    """Per row, the background colour of every cell. tmux carries the pen from one line to the next
    (it writes only changes), so the state is kept across lines."""
    pen = Pen()
    rows: list[list[str]] = []
    for line in ansi.split("\n"):
        row: list[str] = []
        pos = 0
        for m in _ESC.finditer(line):
            row += _cells(line[pos:m.start()], pen)
            if m.group(2) == "m":
                pen.sgr(m.group(1).replace(":", ";").split(";"))
            pos = m.end()
        row += _cells(line[pos:], pen)
        rows.append(row)
    while rows and not rows[-1]:
        rows.pop()
    return rows


def _cells(text: str, pen: Pen) -> list[str]:
    out = []
    for ch in text:
        if unicodedata.combining(ch):
            continue
        out += [pen.shown_bg()] * (2 if unicodedata.east_asian_width(ch) in "WF" else 1)
    return out


def header_check(ansi: str) -> dict:
    """Does the header (row 1, the NavBar) keep a background of its own?"""
    rows = cell_backgrounds(ansi)
    header = rows[0] if rows else []
    body = collections.Counter(bg for row in rows[1:-1] for bg in row)
    header_count = collections.Counter(header)
    body_bg = body.most_common(1)[0][0] if body else "default"
    header_bg = header_count.most_common(1)[0][0] if header else "default"
    return {
        "header_cells": len(header),
        "header_backgrounds": dict(header_count.most_common()),
        "header_bg": header_bg,
        "body_bg": body_bg,
        "header_default_cells": header_count.get("default", 0),
        "keeps_background": bool(header) and header_count.get("default", 0) == 0 and header_bg != body_bg,
    }


# ---- the session ----------------------------------------------------------------------------------


@dataclass
class Session:
    out: Path
    work: Path
    python: str
    repo: Path
    term: str
    timeout: float
    socket: str = field(default_factory=lambda: f"slimlab-tmux-{os.getpid()}")
    n: int = 0
    log: list[dict] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def tmux(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise StepFailed(f"tmux {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def start(self) -> None:
        conf = self.work / "tmux.conf"
        conf.write_text("set -g status off\nset -g remain-on-exit on\nset -g history-limit 2000\n"
                        f"set -g default-terminal {self.term}\nset -g escape-time 10\n")
        env = {"TERM": self.term, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(self.repo),
               "SLIMLAB_ENGINE": "", "PYTHONUNBUFFERED": "1"}
        tui = ("env -u COLORTERM -u NO_COLOR -u FORCE_COLOR -u TEXTUAL -u SLIMLAB_ENGINE "
               + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k != "SLIMLAB_ENGINE")
               + f" {shlex.quote(self.python)} -m app --runs-dir runs --experiments-dir experiments")
        # the exit status goes to a file: tmux 3.3 now and then marked the pane dead without ever giving
        # #{pane_dead_status}, and a line echoed into the pane after the TUI did not always show
        cmd = "sh -c " + shlex.quote(f"{tui}; echo $? > exit-status.tmp && mv exit-status.tmp exit-status")
        self.tmux("-f", str(conf), "new-session", "-d", "-s", "slimlab", "-x", str(WIDTH), "-y", str(HEIGHT),
                  "-c", str(self.work), cmd)
        size = self.tmux("display-message", "-p", "-t", "slimlab", "#{pane_width}x#{pane_height}").strip()
        if size != f"{WIDTH}x{HEIGHT}":
            raise StepFailed(f"the pane is {size}, not {WIDTH}x{HEIGHT}")

    def stop(self) -> None:
        path = self.tmux("display-message", "-p", "#{socket_path}", check=False).strip()
        self.tmux("kill-server", check=False)
        if path:  # tmux leaves the server's socket file behind
            Path(path).unlink(missing_ok=True)

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.tmux("send-keys", "-t", "slimlab", *(["-l"] if literal else []), *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "slimlab")

    def screen_ansi(self) -> str:
        return self.tmux("capture-pane", "-p", "-e", "-N", "-t", "slimlab")

    def exited(self) -> str | None:
        """The TUI's exit status once it has exited, else None."""
        try:
            return (self.work / "exit-status").read_text().strip()
        except FileNotFoundError:
            return None

    def wait(self, what: str, cond, timeout: float | None = None, fail=None, ansi: bool = False,
             stable: bool = False) -> str:
        """Poll the pane until cond(screen) holds (with `stable`: on two polls in a row that read the
        same, so a repaint is complete); fail(screen) returning a message fails at once."""
        deadline = time.monotonic() + (timeout or self.timeout)
        screen = last = ""
        while True:
            screen = self.screen_ansi() if ansi else self.screen()
            if cond(screen) and (not stable or screen == last):
                return screen
            last = screen
            msg = fail(screen) if fail else None
            status = self.exited()
            if msg is None and status is not None:
                msg = f"the TUI exited (status {status})"
            if msg or time.monotonic() > deadline:
                text = self.screen()
                (self.out / "failed-screen.txt").write_text(text)
                (self.out / "failed-screen.ansi").write_text(self.screen_ansi())
                raise StepFailed(f"waiting for {what}: {msg or f'not there after {timeout or self.timeout:.0f} s'}"
                                 f"\n--- last screen ---\n{text}--- end ---")
            time.sleep(0.25)

    def save(self, name: str, note: str) -> tuple[str, str]:
        self.n += 1
        stem = f"{self.n:02d}-{name}"
        text, ansi = self.screen(), self.screen_ansi()
        (self.out / f"{stem}.txt").write_text(text)
        (self.out / f"{stem}.ansi").write_text(ansi)
        self.log.append({"screen": stem, "at_s": round(time.monotonic() - self.t0, 1), "shows": note})
        print(f"[{time.monotonic() - self.t0:7.1f} s] {stem}: {note}", flush=True)
        return text, ansi


def has(*needles: str):
    return lambda s: all(n in s for n in needles)


def header_row(ansi: str) -> str:
    return ansi.split("\n", 1)[0]


def run_failed(screen: str) -> str | None:
    title = screen.split("\n")[1] if screen.count("\n") > 1 else ""
    return f"the run failed: {title.strip()}" if re.search(r"✗|failed|cancelled", title) else None


def bursts(s: Session) -> None:
    """Keys in one send-keys reach the TUI in one read, as over a slow SSH link or from a paste:
    they must be applied strictly in order, focus moves included, and esc followed at once by a digit
    (which the terminal parser reads as alt+digit) must leave the field, not type the digit."""
    # from the name field: runs dir, init, teacher, dtype, tokenizer, arch type, hidden, ffn, layers
    s.keys(*["Tab"] * 9, "C-u", "3", "Tab", "C-u", "8", "Tab", "C-u", "2")
    fields = (r"(?m)^ layers +3 *$", r"(?m)^ heads +8 *$", r"(?m)^ kv heads +2 *$")  # a field per line
    s.wait("layers 3, heads 8, kv heads 2 from one burst",
           lambda t: all(re.search(f, t) for f in fields) and "✓ ok" in t, stable=True)
    s.save("compose-burst", "one burst: 9 tabs, then 3 Tab 8 Tab 2: layers 3, heads 8, kv heads 2; valid")
    s.keys("Escape", "1")
    s.wait("Runs after esc 1", has("No runs under runs/"))
    s.save("runs-after-esc", "esc 1 in one read (alt+1): the field left, Runs shown")
    s.keys("2")
    s.wait("Compose with the burst's values", lambda t: all(re.search(f, t) for f in fields), stable=True)
    s.save("compose-back", "2: Compose, nothing typed by the esc 1")


def session(s: Session, quick: bool) -> dict:
    checks: dict[str, dict] = {}
    s.wait("the Runs screen", has("1 Runs", "No runs under runs/"))
    s.save("runs-empty", "Runs: no runs yet")

    s.keys("2")
    s.wait("Compose", has("Experiment", "my-experiment", "Launch ^l", "✗"))
    s.save("compose-new", "Compose: a new experiment, not valid yet (no teacher)")

    s.keys("C-o")
    s.wait("the file picker", has("Open an experiment file", "experiments/tiny.toml"))
    s.save("open-dialog", "ctrl+o: the picker lists experiments/tiny.toml")

    # type the path and enter (picking from the list with ↓ enter raced: ↓ moves the focus to the list
    # in a later turn, so an enter right behind it could still reach the empty path field)
    s.keys("experiments/tiny.toml", literal=True)
    s.wait("the path typed", lambda t: re.search(r"█ experiments/tiny\.toml +█", t) is not None)
    s.keys("Enter")
    s.wait("the tiny experiment loaded and valid", has("tmux-tiny", "✓ ok: 7 stages", "file experiments/tiny.toml"))
    s.save("compose-loaded", "tiny.toml loaded: scratch teacher 181k params, 7 stages, valid")

    # Here each key waits for its effect on screen, so these screens show each step; bursts across
    # focus changes are bursts()'s part (they were applied out of order before issue 24).
    row = s.screen_ansi().split("\n")[2]
    s.keys("Tab")  # the first field: name
    s.wait("the name field focused", lambda a: a.split("\n")[2] != row, ansi=True)
    s.keys("End")
    s.keys("C-u")
    s.wait("the name field emptied", lambda t: re.search(r"name +required, e\.g\. my-experiment", t) is not None)  # the placeholder
    s.keys(RUN_NAME, literal=True)
    s.wait("the name field retyped", lambda t: re.search(rf"name +{RUN_NAME}\b", t) is not None and "✓ ok" in t)
    s.save("compose-edited", f"name retyped to {RUN_NAME}; still valid")

    bursts(s)
    if quick:
        s.keys("C-s")  # ctrl keys work in a focused field
        tiny = s.work / "experiments" / "tiny.toml"
        s.wait("tiny.toml saved with the new name", lambda _t: f'name = "{RUN_NAME}"' in tiny.read_text())
        s.save("compose-saved", "ctrl+s: saved")
        if "# the tmux session's experiment" not in tiny.read_text():
            raise StepFailed(f"tiny.toml lost its comment when saved:\n{tiny.read_text()}")
        theme_screen = "compose"
    else:
        s.keys("C-l")
        s.wait("Run detail of the launched run",
               lambda t: re.search(rf"{RUN_NAME} +● running", t) is not None and "prepare" in t, fail=run_failed)
        s.save("launched", "ctrl+l: saved, launched detached, Run detail opened on the new run")
        s.wait("the students being pruned and distilled", has("├✓ prune-width"), timeout=4 * s.timeout,
               fail=run_failed)
        s.save("detail-training", "Run detail: teacher trained, students pruned, distillation going on")
        cancel_resume_return(s)
        s.wait("the run to succeed", lambda t: re.search(rf"{RUN_NAME} +✓ succeeded +run 7/7", t) is not None,
               timeout=4 * s.timeout, fail=run_failed)
        s.save("detail-done", "Run detail: the run succeeded, 7/7 stages")
        s.keys("l")
        s.wait("the Log tab", has("[eval] distill-width validation"))
        s.save("detail-log", "l: the Log tab")
        s.keys("1")
        s.wait("the run in the Runs table", lambda t: re.search(rf"{RUN_NAME} +✓ succeeded", t) is not None
               and "Run " in t and "Stage " in t)
        s.save("runs-table", "1: the run in the Runs table")
        s.keys("3")
        s.wait("Compare's first view: which student?",
               lambda t: "which student?" in t and re.search(r"(?m)^ depth +\d+L", t) is not None
               and re.search(r"(?m)^ width +\d+L", t) is not None and "→" in t)
        s.save("compare", "3: Compare, which student? one row per student, the best marked ★")
        s.keys("w")
        s.wait("Compare's curves and tabs",
               has("4 stage(s) ticked", f"{RUN_NAME}/distill-depth", f"{RUN_NAME}/distill-width", "teacher",
                   "distill-depth ", "distill-width "))
        s.save("compare-curves", "w: the run's 4 student stages ticked, their curves, eval results")
        theme_screen = "compare"

    before = header_row(s.screen_ansi())
    checks["dark"] = header_check(s.screen_ansi())
    s.keys("C-t")
    s.wait("the light theme", lambda a: header_row(a) != before, ansi=True, stable=True)
    _, ansi = s.save(f"{theme_screen}-light", "ctrl+t: the light theme")
    checks[f"light ({theme_screen})"] = header_check(ansi)
    light = header_row(ansi)
    if not quick:
        s.keys("1")
        s.wait("Runs in the light theme", lambda t: re.search(rf"{RUN_NAME} +✓ succeeded", t) is not None)
        _, ansi = s.save("runs-light", "1: Runs in the light theme")
        checks["light (runs)"] = header_check(ansi)
        light = header_row(ansi)
    s.keys("C-t")
    s.wait("the dark theme again", lambda a: header_row(a) != light, ansi=True, stable=True)
    _, ansi = s.save(f"{'compose' if quick else 'runs'}-dark", "ctrl+t: back to the dark theme")
    checks["dark again"] = header_check(ansi)

    # ctrl+q (quit, everywhere): a plain q would go into a focused field, and an esc sent just before
    # it can reach the TUI in the same read as the q (then it is alt+q, typed into the field too)
    s.keys("C-q")  # nothing unsaved (saved or launched): no question
    screen = s.wait("the TUI to quit", lambda _t: s.exited() is not None)
    if s.exited() != "0":
        raise StepFailed(f"the TUI exited with status {s.exited()}\n{screen}")
    print(f"[{time.monotonic() - s.t0:7.1f} s] ctrl+q: the TUI quit, status 0", flush=True)
    return checks


def describe(checks: dict[str, dict]) -> str:
    lines = []
    for theme, c in checks.items():
        if c["keeps_background"]:
            verdict = "keeps a background of its own"
        elif c["header_default_cells"]:
            verdict = "LOSES its background (cells on the terminal's default background)"
        else:
            verdict = "is painted, but in the same colour as the body (no band of its own)"
        lines.append(f"{theme}: header {verdict}: header bg {c['header_bg']} "
                     f"({c['header_default_cells']} of {c['header_cells']} cells on the default background; "
                     f"all: {c['header_backgrounds']}), body bg {c['body_bg']}")
    return "\n".join(lines)


def cancel_resume_return(s: Session) -> None:
    """The day's middle: cancel the run from Run detail (the confirmation, then the checkpoint), resume it,
    quit the TUI while it runs, and come back to it in a new TUI (the run went on without one)."""
    s.wait("a student's distillation past its first steps",
           lambda t: re.search(r"● distill-\w+ running +step ([2-9]|\d\d+)/300", t) is not None,
           timeout=4 * s.timeout, fail=run_failed)
    s.keys("c")
    s.wait("the cancel question", has("Cancel run", "Keep running"))
    s.save("cancel-ask", "c: cancel the run? (the default answer keeps it running)")
    s.keys("y")
    s.wait("the run cancelled", lambda t: re.search(rf"{RUN_NAME} +. cancelled", t) is not None,
           timeout=2 * s.timeout)
    s.save("detail-cancelled", "y: cancelled; the running distillation finished its step and saved a checkpoint")
    s.keys("r")
    s.wait("the run resumed", lambda t: re.search(rf"{RUN_NAME} +● running", t) is not None, timeout=2 * s.timeout,
           fail=lambda t: "the run failed" if re.search(rf"{RUN_NAME} +✗", t) else None)  # still "cancelled" at first
    s.save("detail-resumed", "r: resumed, detached, from the checkpoints")
    s.keys("C-q")  # nothing unsaved: no question; the run is its own process and goes on
    s.wait("the TUI to quit while the run goes on", lambda _t: s.exited() is not None)
    if s.exited() != "0":
        raise StepFailed(f"the TUI exited with status {s.exited()}")
    s.stop()
    (s.work / "exit-status").unlink()
    s.start()  # a new TUI, as after an SSH reconnect
    s.wait("the run in a new TUI's Runs table", lambda t: re.search(rf"{RUN_NAME} +(● running|✓ succeeded)", t)
           is not None, fail=run_failed)
    s.save("runs-returned", "a new TUI: the run went on without one and is listed")
    s.keys("Enter")
    s.wait("its Run detail again", lambda t: re.search(rf"{RUN_NAME} +(● running|✓ succeeded) +run", t)
           is not None, fail=run_failed)


def cancel_run(s: Session) -> None:
    run_dir = s.work / "runs" / RUN_NAME
    if (run_dir / "status.json").exists():
        subprocess.run([s.python, "-m", "engine", "cancel", str(run_dir), "--grace", "10"], cwd=s.repo,
                       capture_output=True, timeout=120, env={**os.environ, "PYTHONPATH": str(s.repo)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "tui_tmux",
                    help="where the screens go (default: benchmarks/tui_tmux/); its old *.txt/*.ansi are removed")
    ap.add_argument("--quick", action="store_true", help="compose and save, themes; no run launched")
    ap.add_argument("--term", default="tmux-256color", help="TERM inside tmux (COLORTERM is always unset)")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds per wait (the training run: 4x this); generous, for a loaded machine")
    ap.add_argument("--repo", type=Path, default=ROOT, help="the slimlab checkout the TUI and engine run from")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = ap.parse_args(argv)
    if shutil.which("tmux") is None:
        print("tmux is not installed: nothing to do", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for old in [*args.out.glob("*.txt"), *args.out.glob("*.ansi"), *args.out.glob("summary.json")]:
        old.unlink()
    work = Path(tempfile.mkdtemp(prefix="slimlab-tmux-"))
    (work / "experiments").mkdir()
    (work / "runs").mkdir()
    (work / "experiments" / "tiny.toml").write_text(TINY)
    s = Session(out=args.out, work=work, python=args.python, repo=args.repo.resolve(), term=args.term,
                timeout=args.timeout)
    tmux_version = subprocess.run(["tmux", "-V"], capture_output=True, text=True).stdout.strip()
    print(f"{tmux_version}, TERM={args.term}, COLORTERM unset, {WIDTH}x{HEIGHT}, workspace {work}", flush=True)
    ok, error, checks = False, "", {}
    try:
        s.start()
        checks = session(s, args.quick)
        ok = True
    except StepFailed as e:
        error = str(e)
        print(f"FAILED: {error}", file=sys.stderr, flush=True)
    finally:
        s.stop()
        if not args.quick:
            cancel_run(s)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = {
        "date": datetime.now().isoformat(timespec="seconds"), "ok": ok, "error": error, "quick": args.quick,
        "tmux": tmux_version, "term": args.term, "colorterm": None, "size": f"{WIDTH}x{HEIGHT}",
        "seconds": round(time.monotonic() - s.t0, 1), "screens": s.log, "header": checks,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    text = "\n".join(f"{e['screen']}  (+{e['at_s']} s)  {e['shows']}" for e in s.log)
    (args.out / "summary.txt").write_text(
        f"{summary['date']}  {tmux_version}  TERM={args.term}, COLORTERM unset, {WIDTH}x{HEIGHT}  "
        f"{'ok' if ok else 'FAILED'} in {summary['seconds']} s\n\n{text}\n\nheader (NavBar, row 1) background:\n"
        f"{describe(checks)}\n" + (f"\n{error}\n" if error else ""))
    if checks:
        print(describe(checks), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
